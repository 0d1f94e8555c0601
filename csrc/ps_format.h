/* The one CSV output formatter: how every file prepsync writes, and every line the server
 * stores, spells a value (docs/DESIGN.md, "One CSV dialect per side").
 *
 * A value is quoted only when it holds the separator, a quote, CR or LF; inside the quotes
 * each quote is doubled. The rule is decided in one of two ways and written by one function:
 *  - a value in hand (a key rebuilt into a line): ps_value_quoting scans it;
 *  - a tokenized field: the tokenizer already knows (`special`, against the output
 *    separator) and, for a field that was quoted, holds its quotes already doubled.
 * Both end in ps_format_as, so the bytes cannot drift apart. The Python side's one copy of
 * the rule is prepsync.protocol.csv_record (headers, the server's CSV answers).
 *
 * Everything here is inline: it runs for every kept field of every row. */
#ifndef PS_FORMAT_H
#define PS_FORMAT_H

#include <stddef.h>
#include <string.h>

#include "ps_tokenizer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* How a value is written: as it is, between quotes as it is, or between quotes with each
 * quote doubled. PS_QUOTE_DOUBLING includes PS_QUOTE_WRAP's bit. */
enum { PS_QUOTE_NONE = 0, PS_QUOTE_WRAP = 1, PS_QUOTE_DOUBLING = 3 };

/* How the value v[0, n) must be written with separator `sep`: PS_QUOTE_WRAP when it holds the
 * separator, CR or LF; PS_QUOTE_DOUBLING when it holds a quote. 16 bytes a step without
 * reading outside the range (the last step overlaps the one before). */
static inline int ps_value_quoting(const char *v, size_t n, char sep) {
#if defined(__SSE2__)
    if (n >= 16) {
        const __m128i s = _mm_set1_epi8(sep), q = _mm_set1_epi8('"');
        const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
        __m128i others = _mm_setzero_si128(), quotes = _mm_setzero_si128();
        for (size_t i = 0;; i += 16) {
            if (i + 16 > n) i = n - 16;
            __m128i b = _mm_loadu_si128((const __m128i *)(v + i));
            quotes = _mm_or_si128(quotes, _mm_cmpeq_epi8(b, q));
            others = _mm_or_si128(others, _mm_or_si128(_mm_cmpeq_epi8(b, s),
                                                       _mm_or_si128(_mm_cmpeq_epi8(b, cr), _mm_cmpeq_epi8(b, lf))));
            if (i + 16 >= n) break;
        }
        if (_mm_movemask_epi8(quotes)) return PS_QUOTE_DOUBLING;
        return _mm_movemask_epi8(others) ? PS_QUOTE_WRAP : PS_QUOTE_NONE;
    }
#endif
    int how = PS_QUOTE_NONE;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (ch == '"') return PS_QUOTE_DOUBLING;
        if (ch == sep || ch == '\r' || ch == '\n') how = PS_QUOTE_WRAP;
    }
    return how;
}

/* The formatter: data[0, n) written as `how` says; returns the bytes written (out needs
 * 2 * n + 2). With PS_QUOTE_WRAP the bytes must hold no quote, or hold them already doubled. */
static inline size_t ps_format_as(const char *data, size_t n, int how, char *out) {
    if (how == PS_QUOTE_NONE) {
        ps_copy_bytes(out, data, n);
        return n;
    }
    size_t m = 0;
    out[m++] = '"';
    if (how == PS_QUOTE_DOUBLING) {
        for (size_t i = 0; i < n; i++) {
            out[m++] = data[i];
            if (data[i] == '"') out[m++] = '"';
        }
    } else {
        ps_copy_bytes(out + m, data, n);
        m += n;
    }
    out[m++] = '"';
    return m;
}

/* The value v[0, n) as written with separator `sep`. A DN holds the separator (a comma) but
 * rarely a quote: then it is one copy between quotes. */
static inline size_t ps_format_value(const char *v, size_t n, char sep, char *out) {
    return ps_format_as(v, n, ps_value_quoting(v, n, sep), out);
}

/* A tokenized field as written with the tokenizer's output separator (its `special` was
 * judged against that one). Not special means no quote inside, so the bytes are the value as
 * they are; a field that was quoted holds its quotes already doubled between the quotes. */
static inline size_t ps_field_format(const ps_field *f, char *out) {
    int how = !f->special ? PS_QUOTE_NONE : f->quoted ? PS_QUOTE_WRAP : PS_QUOTE_DOUBLING;
    return ps_format_as(f->data, f->len, how, out);
}

/* A key of escaped values (each closed by 0x00 0x00, a NUL inside a value as 0x00 0x01) as the
 * line of its values, each written with ps_format_value and separated by `sep`. `scratch`
 * holds a value with NULs once unescaped (room: klen bytes); out needs 2 * klen bytes (a value
 * of e escaped bytes takes at most 2e + 2 plus its separator, its key share is e + 2).
 * A key cut short (no closing 0x00 0x00) ends its last value at its end: never a read past it. */
static inline size_t ps_format_key(const char *key, size_t klen, char sep, char *scratch, char *out) {
    size_t n = 0;
    const char *p = key, *end = key + klen;
    while (p < end) {
        if (p != key) out[n++] = sep;
        const char *zero = memchr(p, 0, (size_t)(end - p));
        if (zero && zero + 1 < end && zero[1] == 0) { /* no NUL inside: the key's own bytes */
            n += ps_format_value(p, (size_t)(zero - p), sep, out + n);
            p = zero + 2;
            continue;
        }
        size_t len = 0;
        while (p < end) {
            if (*p != 0) {
                scratch[len++] = *p++;
            } else if (p + 1 < end && p[1] == 1) {
                scratch[len++] = 0;
                p += 2;
            } else {
                break;
            }
        }
        p = end - p > 2 ? p + 2 : end; /* past the closing 0x00 0x00 */
        n += ps_format_value(scratch, len, sep, out + n);
    }
    return n;
}

#endif
