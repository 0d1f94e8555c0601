/* In-memory sort of the arena's index.
 *
 * Each entry carries the first 8 key bytes as a big-endian integer so that most comparisons
 * are one integer compare, without touching the record. Entries compare by (key, input order),
 * input order being the record's arena offset, so no two entries are equal and an unstable sort
 * yields the stable order. */
#ifndef PS_SORT_H
#define PS_SORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct ps_entry {
    uint64_t prefix; /* key bytes 0-7, big-endian, zero-padded */
    uint64_t off;    /* offset of the record in the arena: {u32 klen, u32 llen, key, line} */
} ps_entry;

uint64_t ps_key_prefix(const char *key, size_t klen);
void ps_sort_entries(ps_entry *entries, size_t n, const char *arena);

#endif
