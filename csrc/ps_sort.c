#include "ps_sort.h"

#include <string.h>

#define REC_HEADER 8           /* u32 key length, u32 line length: see ps_cleanse.c */
#define STATE_SHIFT PS_ENTRY_OFFSET_BITS
#define MORE 9u                /* state: more than 8 key bytes left past the chunk */
#define SMALL_RANGE 16         /* shorter ranges finish with a comparison sort */
#define MAX_LEVELS 32          /* recursion bound: deeper ranges use the comparison sort */
#define PREFETCH_AHEAD 8

/* The chunk at `depth` of a key of klen >= depth bytes, and how the key goes on past it. */
static inline void set_chunk(ps_entry *e, const char *key, size_t klen, size_t depth, uint64_t off) {
    size_t left = klen - depth;
    uint64_t state;
    if (left >= 8) {
        e->chunk = ps_load_be64(key + depth);
        state = left > 8 ? MORE : 8;
    } else {
        char bytes[8] = {0};
        memcpy(bytes, key + depth, left);
        e->chunk = ps_load_be64(bytes);
        state = left;
    }
    e->tag = (state << STATE_SHIFT) | off;
}

void ps_entry_init(ps_entry *e, const char *key, size_t klen, uint64_t off) {
    set_chunk(e, key, klen, 0, off);
}

static inline unsigned state_of(const ps_entry *e) { return (unsigned)(e->tag >> STATE_SHIFT); }

static inline const char *record_of(const ps_entry *e, const char *arena) {
    return arena + ps_entry_offset(e);
}

static inline uint32_t key_length(const char *record) {
    uint32_t v;
    memcpy(&v, record, 4);
    return v;
}

/* Replaces each entry's chunk by the one at `depth` (no key is shorter than depth). The
 * records are read in index order, so the next ones are fetched while this one is decoded. */
static void load_chunks(ps_entry *a, size_t n, size_t depth, const char *arena) {
    for (size_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) {
            const char *ahead = record_of(&a[i + PREFETCH_AHEAD], arena);
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + REC_HEADER + depth);
        }
        const char *r = record_of(&a[i], arena);
        set_chunk(&a[i], r + REC_HEADER, key_length(r), depth, ps_entry_offset(&a[i]));
    }
}

/* Entries ordered by their cached chunk and tag alone: no record access. */
static inline int chunk_less(const ps_entry *a, const ps_entry *b, size_t depth, const char *arena) {
    (void)depth;
    (void)arena;
    return a->chunk < b->chunk || (a->chunk == b->chunk && a->tag < b->tag);
}

/* The full order of two entries whose keys agree on [0, depth) and whose chunks are at depth. */
static inline int key_less(const ps_entry *a, const ps_entry *b, size_t depth, const char *arena) {
    if (a->chunk != b->chunk) return a->chunk < b->chunk;
    unsigned sa = state_of(a), sb = state_of(b);
    if (sa != sb) return sa < sb;
    if (sa == MORE) {
        /* Both keys run past the chunk: the bytes after it decide, then the length. */
        const char *ra = record_of(a, arena), *rb = record_of(b, arena);
        size_t ka = key_length(ra), kb = key_length(rb);
        size_t from = depth + 8, m = ka < kb ? ka : kb;
        int c = memcmp(ra + REC_HEADER + from, rb + REC_HEADER + from, m - from);
        if (c) return c < 0;
        if (ka != kb) return ka < kb;
    }
    return ps_entry_offset(a) < ps_entry_offset(b);
}

static inline void swap_entries(ps_entry *a, ps_entry *b) {
    ps_entry t = *a;
    *a = *b;
    *b = t;
}

/* Introsort (median-of-three quicksort, heapsort past the depth limit, insertion sort for
 * short slices), instantiated once per order: the comparison must inline. */
#define DEFINE_INTROSORT(NAME, LESS)                                                              \
    static void NAME##_insertion(ps_entry *a, size_t n, size_t depth, const char *arena) {        \
        for (size_t i = 1; i < n; i++) {                                                          \
            ps_entry x = a[i];                                                                    \
            size_t j = i;                                                                         \
            while (j > 0 && LESS(&x, &a[j - 1], depth, arena)) {                                  \
                a[j] = a[j - 1];                                                                  \
                j--;                                                                              \
            }                                                                                     \
            a[j] = x;                                                                             \
        }                                                                                         \
    }                                                                                             \
    static void NAME##_sift(ps_entry *a, size_t n, size_t i, size_t depth, const char *arena) {   \
        ps_entry x = a[i];                                                                        \
        for (;;) {                                                                                \
            size_t child = 2 * i + 1;                                                             \
            if (child >= n) break;                                                                \
            if (child + 1 < n && LESS(&a[child], &a[child + 1], depth, arena)) child++;           \
            if (!LESS(&x, &a[child], depth, arena)) break;                                        \
            a[i] = a[child];                                                                      \
            i = child;                                                                            \
        }                                                                                         \
        a[i] = x;                                                                                 \
    }                                                                                             \
    static void NAME##_heap(ps_entry *a, size_t n, size_t depth, const char *arena) {             \
        for (size_t i = n / 2; i-- > 0;) NAME##_sift(a, n, i, depth, arena);                      \
        for (size_t end = n; end-- > 1;) {                                                        \
            swap_entries(&a[0], &a[end]);                                                         \
            NAME##_sift(a, end, 0, depth, arena);                                                 \
        }                                                                                         \
    }                                                                                             \
    static void NAME##_intro(ps_entry *a, size_t n, int limit, size_t depth, const char *arena) { \
        while (n > 16) {                                                                          \
            if (limit-- == 0) {                                                                   \
                NAME##_heap(a, n, depth, arena);                                                  \
                return;                                                                           \
            }                                                                                     \
            size_t mid = n / 2;                                                                   \
            if (LESS(&a[mid], &a[0], depth, arena)) swap_entries(&a[mid], &a[0]);                 \
            if (LESS(&a[n - 1], &a[mid], depth, arena)) {                                         \
                swap_entries(&a[n - 1], &a[mid]);                                                 \
                if (LESS(&a[mid], &a[0], depth, arena)) swap_entries(&a[mid], &a[0]);             \
            }                                                                                     \
            /* a[0] <= pivot <= a[n-1] act as sentinels for the two scans below. */               \
            ps_entry pivot = a[mid];                                                              \
            size_t i = 0, j = n - 1;                                                              \
            for (;;) {                                                                            \
                do i++;                                                                           \
                while (LESS(&a[i], &pivot, depth, arena));                                        \
                do j--;                                                                           \
                while (LESS(&pivot, &a[j], depth, arena));                                        \
                if (i >= j) break;                                                                \
                swap_entries(&a[i], &a[j]);                                                       \
            }                                                                                     \
            /* [0, j] <= pivot <= [j+1, n); recurse on the smaller side. */                       \
            size_t left = j + 1, right = n - left;                                                \
            if (left < right) {                                                                   \
                NAME##_intro(a, left, limit, depth, arena);                                       \
                a += left;                                                                        \
                n = right;                                                                        \
            } else {                                                                              \
                NAME##_intro(a + left, right, limit, depth, arena);                               \
                n = left;                                                                         \
            }                                                                                     \
        }                                                                                         \
        NAME##_insertion(a, n, depth, arena);                                                     \
    }                                                                                             \
    static void NAME(ps_entry *a, size_t n, size_t depth, const char *arena) {                    \
        int limit = 0;                                                                            \
        for (size_t m = n; m > 1; m >>= 1) limit += 2;                                            \
        NAME##_intro(a, n, limit, depth, arena);                                                  \
    }

DEFINE_INTROSORT(sort_by_chunk, chunk_less)
DEFINE_INTROSORT(sort_by_key, key_less)

/* The bucket of an entry at byte `byte` (0-7) of its chunk: 0 when its key has ended before
 * that byte (only zero padding is left), else 1 + the byte. */
static inline unsigned digit(const ps_entry *e, unsigned byte) {
    if (state_of(e) <= byte) return 0;
    return 1 + (unsigned)((e->chunk >> (56 - 8 * byte)) & 0xff);
}

/* The first byte from `byte` on (8: none) where the entries' digits may differ. Keys that
 * share a long prefix (the members of one group: `CN=GRP-...,OU=Groups,...,DC=example` and
 * the start of the member's DN) would otherwise cost one counting pass per shared byte; this
 * finds them all in one pass over the cached chunks. Up to the first byte where two chunks
 * differ, and before the shortest key ends (its digit is 0 there), every digit is the same. */
static unsigned shared_bytes(const ps_entry *a, size_t n, unsigned byte) {
    uint64_t first = a[0].chunk, differ = 0;
    unsigned shortest = MORE;
    for (size_t i = 0; i < n; i++) {
        differ |= a[i].chunk ^ first;
        unsigned state = state_of(&a[i]);
        if (state < shortest) shortest = state;
    }
    unsigned same = differ ? (unsigned)__builtin_clzll(differ) / 8 : 8;
    if (same > shortest) same = shortest;
    return same > byte ? same : byte;
}

/* Length of the common prefix of a[0, n) and b[0, n). */
static size_t mismatch(const char *a, const char *b, size_t n) {
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) break;
        i += 8;
    }
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* A short range of entries whose keys agree on [0, depth), chunks at depth. Keys that share
 * more (the members of one group, say) first step over their common prefix, so that the
 * comparisons are mostly decided by the cached chunks rather than by memcmp of the records. */
static void sort_short(ps_entry *a, size_t n, size_t depth, const char *arena) {
    if (n < 2) return;
    /* Keys can share 8 bytes or more past depth only if their cached chunks are all equal and
     * all go on. Otherwise the chunks decide most comparisons, and looking for a common prefix
     * in the records would cost a cache miss per entry for nothing (random GUIDs: always). */
    for (size_t i = 0; i < n; i++)
        if (a[i].chunk != a[0].chunk || state_of(&a[i]) != MORE) {
            sort_by_key(a, n, depth, arena);
            return;
        }
    const char *first = record_of(&a[0], arena);
    size_t first_len = key_length(first);
    size_t common = first_len - depth;
    for (size_t i = 1; i < n && common >= 8; i++) {
        const char *r = record_of(&a[i], arena);
        size_t len = key_length(r) - depth;
        common = mismatch(first + REC_HEADER + depth, r + REC_HEADER + depth, len < common ? len : common);
    }
    if (common >= 8) {
        /* Every key has at least depth + common bytes, so none ends before the new depth. */
        depth += common & ~(size_t)7;
        load_chunks(a, n, depth, arena);
    }
    sort_by_key(a, n, depth, arena);
}

/* Most-significant-digit radix sort (American flag: in place, one byte at a time) of entries
 * whose keys agree on [0, depth + byte) and whose chunks are at depth. Short ranges, and any
 * range past MAX_LEVELS nested splits (which bounds the stack), finish with a comparison sort. */
static void radix_range(ps_entry *a, size_t n, size_t depth, unsigned byte, int level, const char *arena) {
    size_t count[257], next[257];
    for (;;) {
        if (n <= SMALL_RANGE) {
            sort_short(a, n, depth, arena);
            return;
        }
        if (level >= MAX_LEVELS) {
            sort_by_key(a, n, depth, arena);
            return;
        }
        if (byte == 8) {
            /* The keys agree on [0, depth + 8): those that end there are equal and go first,
             * in input order; the others go on with their next chunk. A loop, not a call, so
             * that a prefix shared by many keys costs no stack however long it is. */
            size_t ended = 0;
            for (size_t i = 0; i < n; i++)
                if (state_of(&a[i]) != MORE) swap_entries(&a[i], &a[ended++]);
            sort_by_chunk(a, ended, depth, arena);
            a += ended;
            n -= ended;
            if (n < 2) return;
            depth += 8;
            load_chunks(a, n, depth, arena);
            byte = shared_bytes(a, n, 0);
            continue;
        }
        /* Keys are mostly text: a byte takes a few dozen values at most (digits, letters), so
         * the loops over buckets below run from the lowest digit seen to the highest, not over
         * all 257 (at the ends of the radix a range holds fewer keys than buckets). */
        memset(count, 0, sizeof count);
        unsigned lo = 256, hi = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned d = digit(&a[i], byte);
            count[d]++;
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        if (lo == hi) {
            /* One bucket: a shared byte to step over (or equal keys that all ended). */
            if (digit(&a[0], byte) == 0) {
                sort_by_chunk(a, n, depth, arena);
                return;
            }
            byte = shared_bytes(a, n, byte + 1);
            continue;
        }
        size_t sum = 0;
        for (unsigned b = lo; b <= hi; b++) {
            next[b] = sum;
            sum += count[b];
        }
        /* Cycle each misplaced entry to the next free slot of its bucket. */
        size_t bucket_end = 0;
        for (unsigned b = lo; b <= hi; b++) {
            bucket_end += count[b];
            while (next[b] < bucket_end) {
                ps_entry x = a[next[b]];
                unsigned d = digit(&x, byte);
                while (d != b) {
                    ps_entry y = a[next[d]];
                    a[next[d]++] = x;
                    x = y;
                    d = digit(&x, byte);
                }
                a[next[b]++] = x;
            }
        }
        /* Keys that ended are equal: input order. The rest go on with the next byte. */
        sort_by_chunk(a, count[0], depth, arena);
        size_t from = count[0];
        for (unsigned b = lo > 1 ? lo : 1; b <= hi; b++) {
            if (count[b] > 1) radix_range(a + from, count[b], depth, byte + 1, level + 1, arena);
            from += count[b];
        }
        return;
    }
}

void ps_sort_entries(ps_entry *entries, size_t n, const char *arena) {
    if (n > 1) radix_range(entries, n, 0, 0, 0, arena);
}
