/* In-memory sort of the arena's index by (key, input order).
 *
 * Keys are compared as byte strings (memcmp, then length). Identity Manager's link tables have
 * keys that share long prefixes (two distinguished names: `CN=GRP-...,OU=Groups,DC=corp,...`),
 * so a comparison sort that looks at a fixed key prefix and falls back to memcmp of the tails
 * touches the records at random for nearly every comparison. Instead the sort is a most-
 * significant-digit sort on 8-byte chunks: each entry caches the 8 key bytes at the current
 * depth, a range is sorted on those cached integers alone (no record access), and only the
 * groups whose chunks are equal load their next chunk and go one level deeper. A record is
 * thus read once per level it needs, sequentially through the index, with prefetching.
 *
 * An entry is 16 bytes: the cached chunk and a tag holding the record's arena offset and how
 * the key goes on past the chunk. Input order is the arena offset (records are appended), so
 * entries never compare equal and an unstable sort yields the stable order. */
#ifndef PS_SORT_H
#define PS_SORT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Arena offsets must stay below 2^40 (1 TiB), far above any arena the budget allows. */
#define PS_ENTRY_OFFSET_BITS 40
#define PS_ENTRY_OFFSET_MASK (((uint64_t)1 << PS_ENTRY_OFFSET_BITS) - 1)

typedef struct ps_entry {
    uint64_t chunk; /* key bytes [depth, depth + 8), big-endian, zero-padded */
    /* bits 0-39: offset of the record {u32 klen, u32 llen, key, line} in the arena;
     * bits 40-43: key bytes left from depth, 0-8, or 9 for "more than 8". Ordering by
     * (chunk, tag) orders by the key's 8 bytes, then by its end (a key that ends inside the
     * chunk is a prefix of any longer key with the same chunk), then by input order. */
    uint64_t tag;
} ps_entry;

static inline uint64_t ps_entry_offset(const ps_entry *e) { return e->tag & PS_ENTRY_OFFSET_MASK; }

/* 8 bytes as a big-endian integer: integers then order as memcmp orders the bytes. */
static inline uint64_t ps_load_be64(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Fills an entry for the record at arena offset `off` whose key is key[0, klen). */
void ps_entry_init(ps_entry *e, const char *key, size_t klen, uint64_t off);
void ps_sort_entries(ps_entry *entries, size_t n, const char *arena);

#endif
