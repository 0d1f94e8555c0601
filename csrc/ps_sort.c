#include "ps_sort.h"

#include <string.h>

uint64_t ps_key_prefix(const char *key, size_t klen) {
    unsigned char bytes[8] = {0};
    memcpy(bytes, key, klen < 8 ? klen : 8);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | bytes[i];
    return v;
}

static inline int entry_less(const ps_entry *a, const ps_entry *b, const char *arena) {
    if (a->prefix != b->prefix) return a->prefix < b->prefix;
    const char *ra = arena + a->off, *rb = arena + b->off;
    uint32_t ka, kb;
    memcpy(&ka, ra, 4);
    memcpy(&kb, rb, 4);
    /* Equal prefixes: bytes 0-7 agree (zero padding only equals where the shorter key ends),
     * so the rest decides, then the length, then input order. */
    size_t m = ka < kb ? ka : kb;
    if (m > 8) {
        int c = memcmp(ra + 8 + 8, rb + 8 + 8, m - 8);
        if (c) return c < 0;
    }
    if (ka != kb) return ka < kb;
    return a->off < b->off;
}

static void insertion_sort(ps_entry *a, size_t n, const char *arena) {
    for (size_t i = 1; i < n; i++) {
        ps_entry x = a[i];
        size_t j = i;
        while (j > 0 && entry_less(&x, &a[j - 1], arena)) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
}

static void sift_down(ps_entry *a, size_t n, size_t i, const char *arena) {
    ps_entry x = a[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && entry_less(&a[child], &a[child + 1], arena)) child++;
        if (!entry_less(&x, &a[child], arena)) break;
        a[i] = a[child];
        i = child;
    }
    a[i] = x;
}

static void heap_sort(ps_entry *a, size_t n, const char *arena) {
    for (size_t i = n / 2; i-- > 0;) sift_down(a, n, i, arena);
    for (size_t end = n; end-- > 1;) {
        ps_entry t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, end, 0, arena);
    }
}

static inline void swap(ps_entry *a, ps_entry *b) {
    ps_entry t = *a;
    *a = *b;
    *b = t;
}

/* Introsort: quicksort with median-of-three, heapsort past the depth limit, insertion sort
 * for short slices. */
static void intro_sort(ps_entry *a, size_t n, int depth, const char *arena) {
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(a, n, arena);
            return;
        }
        size_t mid = n / 2;
        if (entry_less(&a[mid], &a[0], arena)) swap(&a[mid], &a[0]);
        if (entry_less(&a[n - 1], &a[mid], arena)) {
            swap(&a[n - 1], &a[mid]);
            if (entry_less(&a[mid], &a[0], arena)) swap(&a[mid], &a[0]);
        }
        /* a[0] <= pivot <= a[n-1] act as sentinels for the two scans below. */
        ps_entry pivot = a[mid];
        size_t i = 0, j = n - 1;
        for (;;) {
            do i++; while (entry_less(&a[i], &pivot, arena));
            do j--; while (entry_less(&pivot, &a[j], arena));
            if (i >= j) break;
            swap(&a[i], &a[j]);
        }
        /* [0, j] <= pivot <= [j+1, n); recurse on the smaller side. */
        size_t left = j + 1, right = n - left;
        if (left < right) {
            intro_sort(a, left, depth, arena);
            a += left;
            n = right;
        } else {
            intro_sort(a + left, right, depth, arena);
            n = left;
        }
    }
    insertion_sort(a, n, arena);
}

void ps_sort_entries(ps_entry *entries, size_t n, const char *arena) {
    int depth = 0;
    for (size_t m = n; m > 1; m >>= 1) depth += 2;
    intro_sort(entries, n, depth, arena);
}
