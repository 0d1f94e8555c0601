#include "ps_tokenizer.h"

#include "ps_format.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define PS_MIN_RETRY_STEP ((size_t)64 << 10)
#define PS_MAX_RETRY_STEP ((size_t)8 << 20)

size_t ps_record_limit(size_t budget) {
    size_t limit = budget / 16;
    if (limit > PS_MAX_RECORD) limit = PS_MAX_RECORD;
    return limit < ((size_t)64 << 10) ? (size_t)64 << 10 : limit;
}

size_t ps_field_limit(size_t budget) {
    size_t limit = budget / 512;
    return limit < 4096 ? 4096 : limit;
}

void ps_format_size(size_t n, char *out, size_t cap) {
    if (n >= ((size_t)1 << 30) && n % ((size_t)1 << 30) == 0)
        snprintf(out, cap, "%zu GiB", n >> 30);
    else if (n >= ((size_t)1 << 20) && n % ((size_t)1 << 20) == 0)
        snprintf(out, cap, "%zu MiB", n >> 20);
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(out, cap, "%zu KiB", n >> 10);
    else
        snprintf(out, cap, "%zu bytes", n);
}

int ps_tok_init(ps_tokenizer *t, char separator, size_t initial_cap, size_t memory_budget,
                int error_code, ps_error *err) {
    memset(t, 0, sizeof *t);
    t->separator = separator;
    t->out_separator = separator;
    t->preamble_done = 1;
    t->line = 1;
    t->error_code = error_code;
    t->budget = memory_budget;
    t->max_record = ps_record_limit(memory_budget);
    t->max_fields = ps_field_limit(memory_budget);
    t->stop[(unsigned char)separator] = 1;
    t->stop['\n'] = 1;
    t->stop['\r'] = 1;
    t->stop['"'] = 1;
    t->cap = initial_cap < 4096 ? 4096 : initial_cap;
    t->initial_cap = t->cap;
    t->buf = ps_alloc(t->cap);
    t->fields_cap = 64;
    t->fields = malloc(t->fields_cap * sizeof *t->fields);
#if defined(__x86_64__) && defined(__GNUC__)
    t->avx2 = __builtin_cpu_supports("avx2");
#if PREPSYNC_DEBUG_BUILD
    const char *no_avx2 = getenv("PREPSYNC_DEBUG_NO_AVX2");
    if (no_avx2 && strcmp(no_avx2, "1") == 0) t->avx2 = 0; /* the other paths, for the tests */
#endif
#endif
    if (!t->buf || !t->fields) {
        ps_tok_release(t);
        return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for the CSV buffer");
    }
    return PS_OK;
}

int ps_separator_ok(char c) {
    return c != 0 && (unsigned char)c < 0x80 && c != '"' && c != '\r' && c != '\n';
}

static void set_separator(ps_tokenizer *t, char separator) {
    t->stop[(unsigned char)t->separator] = 0;
    t->separator = separator;
    t->stop[(unsigned char)separator] = 1;
    t->stop['\n'] = t->stop['\r'] = t->stop['"'] = 1;
    t->refine = t->ntrim > 0 || t->separator != t->out_separator;
}

int ps_tok_set_dialect(ps_tokenizer *t, const ps_dialect *d, ps_error *err) {
    t->skip_lines = t->skip_requested = d->skip_lines > 0 ? d->skip_lines : 0;
    t->sep_hint = d->sep_hint;
    t->preamble_done = !t->sep_hint && t->skip_lines == 0;
    t->hints = d->hints;
    t->out_separator = d->out_separator ? d->out_separator : t->separator;
    t->ntrim = 0;
    for (size_t i = 0; i < d->trim_bytes;) {
        size_t n = (unsigned char)d->trim[i];
        if (n < 1 || n > 4 || i + 1 + n > d->trim_bytes || t->ntrim == PS_MAX_TRIM)
            return ps_fail(err, PS_ERR_ARG, 0, -1, "bad list of values to trim");
        memcpy(t->trim[t->ntrim], d->trim + i + 1, n);
        t->trim_len[t->ntrim++] = (unsigned char)n;
        i += 1 + n;
    }
    set_separator(t, t->separator);
    return PS_OK;
}

void ps_tok_release(ps_tokenizer *t) {
    ps_free(t->buf, t->cap);
    free(t->fields);
    t->buf = NULL;
    t->fields = NULL;
    t->cap = t->fields_cap = 0;
}

char *ps_tok_reserve(ps_tokenizer *t, size_t want, ps_error *err) {
    if (t->cap - t->len < want && t->pos > 0) {
        /* Slide the unread tail to the front; handed-out spans die here, as documented. */
        memmove(t->buf, t->buf + t->pos, t->len - t->pos);
        t->base_offset += (int64_t)t->pos;
        t->len -= t->pos;
        t->pos = 0;
    }
    if (t->cap - t->len < want) {
        /* Double, but never past what the largest record allows (plus the read in progress):
         * a record over the limit is refused before the buffer would need more. */
        size_t need = t->len + want;
        size_t ceiling = t->max_record + t->initial_cap + want;
        size_t cap = 2 * t->cap;
        if (cap > ceiling) cap = ceiling;
        if (cap < need) cap = need;
        char *grown = ps_realloc(t->buf, t->cap, cap);
        if (!grown) {
            ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for the CSV buffer");
            return NULL;
        }
        t->buf = grown;
        t->cap = cap;
    }
    return t->buf + t->len;
}

void ps_tok_commit(ps_tokenizer *t, size_t n) { t->len += n; }

int ps_tok_feed(ps_tokenizer *t, const char *data, size_t n, ps_error *err) {
    if (n == 0) return PS_OK;
    char *room = ps_tok_reserve(t, n, err);
    if (!room) return err->code;
    memcpy(room, data, n);
    t->len += n;
    return PS_OK;
}

void ps_tok_set_eof(ps_tokenizer *t) {
    t->eof = 1;
    t->retry_at = 0;
}

/* The first byte at or after p that is the separator, a quote, CR or LF (or end). Fields are
 * mostly plain bytes, so this is the tokenizer's hot loop: 16 bytes a step with SSE2 (always
 * there on x86-64), then a table lookup per byte for the tail. */
static inline const char *scan_plain(const char *p, const char *end, const ps_tokenizer *t) {
#if defined(__SSE2__)
    const __m128i sep = _mm_set1_epi8(t->separator), quote = _mm_set1_epi8('"');
    const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
    while (end - p >= 16) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)p);
        __m128i hits = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(bytes, sep), _mm_cmpeq_epi8(bytes, quote)),
            _mm_or_si128(_mm_cmpeq_epi8(bytes, lf), _mm_cmpeq_epi8(bytes, cr)));
        int mask = _mm_movemask_epi8(hits);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && !t->stop[(unsigned char)*p]) p++;
    return p;
}

/* Inside quotes: the first quote at or after p (or end). On the way it notes whether the
 * value holds the separator, CR or LF (then it must be quoted again on output) and counts
 * the LFs, so that a DN full of commas is one sweep, not one stop per comma. */
static inline const char *scan_quoted(const char *p, const char *end, const ps_tokenizer *t,
                                      int *special, int64_t *line_feeds) {
#if defined(__SSE2__)
    const __m128i sep = _mm_set1_epi8(t->separator), quote = _mm_set1_epi8('"');
    const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
    while (end - p >= 16) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)p);
        unsigned quotes = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, quote));
        unsigned feeds = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, lf));
        unsigned others = (unsigned)_mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(bytes, sep), _mm_cmpeq_epi8(bytes, cr)));
        unsigned before = quotes ? (1u << __builtin_ctz(quotes)) - 1 : 0xFFFFu;
        if ((feeds | others) & before) {
            *special = 1;
            /* Only here: without -mpopcnt (a portable build) this is a library call. */
            if (feeds & before) *line_feeds += __builtin_popcount(feeds & before);
        }
        if (quotes) return p + __builtin_ctz(quotes);
        p += 16;
    }
#endif
    for (; p < end; p++) {
        char ch = *p;
        if (ch == '"') return p;
        if (ch == t->separator || ch == '\r' || ch == '\n') {
            *special = 1;
            *line_feeds += ch == '\n';
        }
    }
    return end;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PS_AVX2 1 /* AVX2 paths (UTF-8 check, row masks), taken where the CPU has it */
#include <immintrin.h>

/* UTF-8 validation 32 bytes at a time (Keiser and Lemire, "Validating UTF-8 In Less Than One
 * Instruction Per Byte", 2021). Each byte is classified with the byte before it by three
 * 16-entry table lookups (the high nibble of the previous byte, its low nibble, the high nibble
 * of this byte): each lookup gives the set of errors that nibble is consistent with, so the
 * AND of the three is the set of errors the pair commits. The one error bit a pair cannot see,
 * "a continuation byte that must be the 3rd or 4th of a sequence" (TWO_CONTS), is cancelled
 * where a lead two or three bytes back calls for one. The test data of the AD exports is full
 * of accented names: the byte-at-a-time check below took as long as tokenizing. Only whether
 * the record is valid comes from here; where it is not, the byte-at-a-time check names the
 * offset, so errors read the same whichever path ran. */
#define U8_TOO_SHORT (1 << 0)  /* a lead not followed by enough continuations */
#define U8_TOO_LONG (1 << 1)   /* a continuation after ASCII */
#define U8_OVERLONG_3 (1 << 2) /* E0 80..9F */
#define U8_TOO_LARGE (1 << 3)  /* over U+10FFFF: F4 90.., F5.. */
#define U8_SURROGATE (1 << 4)  /* ED A0..BF */
#define U8_OVERLONG_2 (1 << 5) /* C0, C1 */
#define U8_TOO_LARGE_1000 (1 << 6)
#define U8_OVERLONG_4 (1 << 6) /* F0 80..8F; shares its bit with F5.. 80..8F */
#define U8_TWO_CONTS (1 << 7)  /* two continuations in a row */
#define U8_CARRY (U8_TOO_SHORT | U8_TOO_LONG | U8_TWO_CONTS)

#define U8_TABLE(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)                                  \
    _mm256_setr_epi8(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, a, b, c, d, e, f, g, h, i, j, \
                     k, l, m, n, o, p)
/* The byte `n` places back, across the previous block: lanes are 128 bits, so the previous
 * block's upper half is brought next to this block's lower half first. */
#define U8_PREV(input, prev, n)                                                                   \
    _mm256_alignr_epi8(input, _mm256_permute2x128_si256(prev, input, 0x21), 16 - (n))

__attribute__((target("avx2"))) static int utf8_valid_avx2(const unsigned char *s, size_t n) {
    const __m256i byte_1_high = U8_TABLE(
        U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG, U8_TOO_LONG,
        U8_TOO_LONG, U8_TWO_CONTS, U8_TWO_CONTS, U8_TWO_CONTS, U8_TWO_CONTS,
        U8_TOO_SHORT | U8_OVERLONG_2, U8_TOO_SHORT, U8_TOO_SHORT | U8_OVERLONG_3 | U8_SURROGATE,
        U8_TOO_SHORT | U8_TOO_LARGE | U8_TOO_LARGE_1000 | U8_OVERLONG_4);
    const __m256i byte_1_low = U8_TABLE(
        U8_CARRY | U8_OVERLONG_3 | U8_OVERLONG_2 | U8_OVERLONG_4, U8_CARRY | U8_OVERLONG_2,
        U8_CARRY, U8_CARRY, U8_CARRY | U8_TOO_LARGE, U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000, U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000, U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000, U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000 | U8_SURROGATE,
        U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000, U8_CARRY | U8_TOO_LARGE | U8_TOO_LARGE_1000);
    const __m256i byte_2_high = U8_TABLE(
        U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT,
        U8_TOO_SHORT, U8_TOO_SHORT,
        U8_TOO_LONG | U8_OVERLONG_2 | U8_TWO_CONTS | U8_OVERLONG_3 | U8_TOO_LARGE_1000 | U8_OVERLONG_4,
        U8_TOO_LONG | U8_OVERLONG_2 | U8_TWO_CONTS | U8_OVERLONG_3 | U8_TOO_LARGE,
        U8_TOO_LONG | U8_OVERLONG_2 | U8_TWO_CONTS | U8_SURROGATE | U8_TOO_LARGE,
        U8_TOO_LONG | U8_OVERLONG_2 | U8_TWO_CONTS | U8_SURROGATE | U8_TOO_LARGE, U8_TOO_SHORT,
        U8_TOO_SHORT, U8_TOO_SHORT, U8_TOO_SHORT);
    /* A block ending in the first bytes of a sequence needs the next block: these are the
     * largest last three bytes that do not start one (a 4-, 3- or 2-byte lead respectively). */
    const __m256i max_complete = _mm256_setr_epi8(
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, (char)(0xF0 - 1), (char)(0xE0 - 1), (char)(0xC0 - 1));
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i error = _mm256_setzero_si256(), prev = _mm256_setzero_si256();
    __m256i prev_incomplete = _mm256_setzero_si256();
    size_t i = 0;
    for (;;) {
        __m256i input;
        if (i + 32 <= n) {
            input = _mm256_loadu_si256((const __m256i *)(s + i));
        } else if (i < n) {
            /* The tail, zero-padded: a NUL after a cut-off sequence is an error, as it must be. */
            unsigned char tail[32] = {0};
            memcpy(tail, s + i, n - i);
            input = _mm256_loadu_si256((const __m256i *)tail);
        } else {
            break;
        }
        i += 32;
        if (!_mm256_movemask_epi8(input)) {
            error = _mm256_or_si256(error, prev_incomplete);
            prev_incomplete = _mm256_setzero_si256();
        } else {
            __m256i prev1 = U8_PREV(input, prev, 1);
            __m256i b1h = _mm256_shuffle_epi8(
                byte_1_high, _mm256_and_si256(_mm256_srli_epi16(prev1, 4), nibble));
            __m256i b1l = _mm256_shuffle_epi8(byte_1_low, _mm256_and_si256(prev1, nibble));
            __m256i b2h = _mm256_shuffle_epi8(
                byte_2_high, _mm256_and_si256(_mm256_srli_epi16(input, 4), nibble));
            __m256i special = _mm256_and_si256(_mm256_and_si256(b1h, b1l), b2h);
            /* Third bytes of 3- and 4-byte sequences and fourth bytes of 4-byte ones. */
            __m256i third = _mm256_subs_epu8(U8_PREV(input, prev, 2), _mm256_set1_epi8(0xE0 - 0x80));
            __m256i fourth = _mm256_subs_epu8(U8_PREV(input, prev, 3), _mm256_set1_epi8(0xF0 - 0x80));
            __m256i must_continue = _mm256_and_si256(_mm256_or_si256(third, fourth),
                                                     _mm256_set1_epi8((char)0x80));
            error = _mm256_or_si256(error, _mm256_xor_si256(must_continue, special));
            prev_incomplete = _mm256_subs_epu8(input, max_complete);
        }
        prev = input;
    }
    error = _mm256_or_si256(error, prev_incomplete);
    return _mm256_testz_si256(error, error);
}
#endif

/* Byte at a time past an ASCII fast path: names the first bad byte. */
static int utf8_valid_scalar(const unsigned char *s, size_t n, size_t *bad) {
    size_t i = 0;
    while (i < n) {
        /* ASCII fast path: 16 bytes at a time, then 8. */
#if defined(__SSE2__)
        while (i + 16 <= n &&
               !_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(s + i))))
            i += 16;
#endif
        while (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;      /* no overlong 3-byte forms */
            else if (c == 0xED) hi = 0x9F; /* no UTF-16 surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;      /* no overlong 4-byte forms */
            else if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
        } else {
            *bad = i;
            return 0;
        }
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= n) {
                *bad = i;
                return 0;
            }
            unsigned char cc = s[i + k];
            unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
            if (cc < min || cc > max) {
                *bad = i;
                return 0;
            }
        }
        i += need + 1;
    }
    return 1;
}

/* 1 when s[0, n) is valid UTF-8; otherwise 0 and *bad is the offset of the first bad byte. */
static int utf8_valid(const ps_tokenizer *t, const unsigned char *s, size_t n, size_t *bad) {
#if defined(PS_AVX2)
    if (t->avx2 && utf8_valid_avx2(s, n)) return 1;
#else
    (void)t;
#endif
    return utf8_valid_scalar(s, n, bad);
}

/* The encodings a byte-order mark betrays. UTF-32 LE starts like UTF-16 LE, so it goes first. */
static const struct {
    const char *mark;
    size_t len;
    const char *name, *shown;
} foreign_marks[] = {
    {"\xFF\xFE\x00\x00", 4, "UTF-32 LE", "FF FE 00 00"},
    {"\x00\x00\xFE\xFF", 4, "UTF-32 BE", "00 00 FE FF"},
    {"\xFF\xFE", 2, "UTF-16 LE", "FF FE"},
    {"\xFE\xFF", 2, "UTF-16 BE", "FE FF"},
};

#define CR_ONLY_PROBLEM                                                                           \
    "bare CR in the header line: the file has CR-only line ends (classic Mac OS, Excel's "      \
    "\"CSV (Macintosh)\"); save it with LF or CRLF line ends"

static int check_start_of_file(ps_tokenizer *t, ps_error *err) {
    size_t avail = t->len - t->pos;
    if (avail < 4 && !t->eof) return PS_TOK_NEED_MORE;
    const char *b = t->buf + t->pos;
    for (size_t i = 0; i < sizeof foreign_marks / sizeof foreign_marks[0]; i++) {
        if (avail >= foreign_marks[i].len && memcmp(b, foreign_marks[i].mark, foreign_marks[i].len) == 0)
            return ps_fail(err, t->error_code, 1, t->base_offset + (int64_t)t->pos,
                           "%s file (byte-order mark %s): save it as UTF-8 (Windows PowerShell: "
                           "Export-Csv -Encoding UTF8)",
                           foreign_marks[i].name, foreign_marks[i].shown);
    }
    if (avail >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0) t->pos += 3;
    t->bom_checked = 1;
    return PS_OK;
}

/* "the 16 MiB memory budget", or "this table's 8 MiB share of the 16 MiB memory budget (split
 * between 2 tables cleansed at once, --parallel)" when tables cleansed in parallel split it: the
 * user must know what to raise. */
static void describe_budget(const ps_tokenizer *t, char *out, size_t cap) {
    char size[32], total[32];
    ps_format_size(t->budget, size, sizeof size);
    if (t->budget_shares > 1) {
        ps_format_size(t->budget * (size_t)t->budget_shares, total, sizeof total);
        snprintf(out, cap, "this table's %s share of the %s memory budget (split between %d "
                 "tables cleansed at once, --parallel)", size, total, t->budget_shares);
    } else {
        snprintf(out, cap, "the %s memory budget", size);
    }
}

static int fail_too_large(ps_tokenizer *t, int header, ps_error *err) {
    char budget[200], limit[32];
    describe_budget(t, budget, sizeof budget);
    ps_format_size(t->max_record, limit, sizeof limit);
    const char *rule = t->max_record == PS_MAX_RECORD && t->budget / 16 > PS_MAX_RECORD
                           ? "the most prepsync takes"
                           : (t->budget_shares > 1 ? "share / 16" : "budget / 16");
    return ps_fail(err, t->error_code, t->line, t->base_offset + (int64_t)t->pos,
                   "%s too large for %s: the longest allowed is %s (%s)%s",
                   header ? "header line" : "row", budget, limit, rule,
                   header ? "" : "; unterminated quote?");
}

static int fail_too_many_fields(ps_tokenizer *t, int header, ps_error *err) {
    char budget[200];
    describe_budget(t, budget, sizeof budget);
    return ps_fail(err, t->error_code, t->line, t->base_offset + (int64_t)t->pos,
                   "%s more than %zu fields, too many for %s", header ? "header has" : "row has",
                   t->max_fields, budget);
}

/* Lines before the header: an Excel `sep=X` first line (it names the separator, and is one
 * of the lines --skip-lines drops, or the only one), then the lines still to skip. Skipped lines
 * end at LF, quotes mean nothing there, and their bytes are not looked at: a preamble of any
 * length streams through without being held. */
static int consume_preamble(ps_tokenizer *t, ps_error *err) {
    if (t->sep_hint) {
        size_t avail = t->len - t->pos;
        const char *p = t->buf + t->pos;
        if (avail < 7 && !t->eof) return PS_TOK_NEED_MORE;
        if (avail >= 5 && (p[0] | 0x20) == 's' && (p[1] | 0x20) == 'e' && (p[2] | 0x20) == 'p' &&
            p[3] == '=') {
            size_t end = avail == 5 ? 0 : p[5] == '\n' ? 1 : (avail >= 7 && p[5] == '\r' && p[6] == '\n') ? 2 : 9;
            if (end != 9) {
                if (!ps_separator_ok(p[4]))
                    return ps_fail(err, t->error_code, t->line, t->base_offset + (int64_t)t->pos,
                                   "the first line 'sep=' names byte 0x%02X as the separator, "
                                   "which prepsync cannot use (one ASCII character other than a "
                                   "quote, CR or LF)", (unsigned char)p[4]);
                set_separator(t, p[4]);
                t->pos += 5 + end;
                t->line += end > 0;
                if (t->skip_lines > 0) t->skip_lines--;
            }
        }
        t->sep_hint = 0;
    }
    while (t->skip_lines > 0) {
        const char *p = t->buf + t->pos;
        const char *lf = memchr(p, '\n', t->len - t->pos);
        if (!lf) {
            t->pos = t->len; /* this line goes on in the next block */
            if (!t->eof) return PS_TOK_NEED_MORE;
            return ps_fail(err, t->error_code, t->line, t->base_offset + (int64_t)t->pos,
                           "the file ends before its header: %lld line(s) to skip (--skip-lines)",
                           (long long)t->skip_requested);
        }
        t->pos = (size_t)(lf + 1 - t->buf);
        t->line++;
        t->skip_lines--;
    }
    t->preamble_done = 1;
    return PS_OK;
}

/* Removes every leading and trailing `c` (n bytes) from the field, one entry at a time. A quote
 * inside a quoted field with doubled quotes is two bytes there. */
static void trim_field(ps_field *f, const char *c, size_t n) {
    size_t step = n == 1 && c[0] == '"' && f->escaped ? 2 : n;
    const char *d = f->data;
    size_t len = f->len;
    while (len >= step && memcmp(d, c, n) == 0 && (step == n || d[1] == '"')) {
        d += step;
        len -= step;
    }
    while (len >= step && memcmp(d + len - step, c, n) == 0 && (step == n || d[len - 1] == '"'))
        len -= step;
    f->data = d;
    f->len = (uint32_t)len;
}

/* ValuesToTrim, in order, then `special` against the output separator (a value trimmed, or read
 * with another separator, may need quotes where it did not, or no longer need them). */
static void refine_fields(const ps_tokenizer *t, ps_field *fields, size_t nf) {
    const char osep = t->out_separator;
    for (size_t i = 0; i < nf; i++) {
        ps_field *f = &fields[i];
        for (int k = 0; k < t->ntrim; k++) trim_field(f, t->trim[k], t->trim_len[k]);
        /* A quoted field's doubled quotes are quotes too: special either way. */
        f->special = ps_value_quoting(f->data, f->len, osep) != PS_QUOTE_NONE;
    }
}

/* Bytes of the likely separators other than the one in use, in a bad row: when one of them
 * would give the header's field count, the file was probably written with it. */
static char other_separator(const ps_tokenizer *t, const char *start, const char *end,
                            size_t expected) {
    static const char candidates[] = {',', ';', '\t', '|'};
    for (size_t i = 0; i < sizeof candidates; i++) {
        char c = candidates[i];
        if (c == t->separator) continue;
        size_t count = 1;
        for (const char *p = start; p < end; p++) count += *p == c;
        if (count == expected) return c;
    }
    return 0;
}

#if defined(__SSE2__)
/* The fast path for an ordinary row (see ps_tok_next): where the separators, quotes, CRs and LFs
 * of 64 bytes are, as bit masks made once, so that a short field costs a shift and a count of
 * trailing zeros instead of a vector scan of its own. */
typedef struct tok_block {
    const char *base;
    uint64_t quote, lf, others; /* others: the separator and CR */
} tok_block;

static inline void load_block_sse2(tok_block *b, const char *at, char sep) {
    b->base = at;
    b->quote = b->lf = b->others = 0;
    const __m128i vq = _mm_set1_epi8('"'), vl = _mm_set1_epi8('\n');
    const __m128i vs = _mm_set1_epi8(sep), vc = _mm_set1_epi8('\r');
    for (int i = 0; i < 4; i++) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(at + 16 * i));
        int shift = 16 * i;
        b->quote |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, vq)) << shift;
        b->lf |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, vl)) << shift;
        b->others |= (uint64_t)(unsigned)_mm_movemask_epi8(
                         _mm_or_si128(_mm_cmpeq_epi8(bytes, vs), _mm_cmpeq_epi8(bytes, vc)))
                     << shift;
    }
}

#if defined(PS_AVX2)
/* The same masks 32 bytes a step: 6-9 % less time for the whole tokenizer on the bench's
 * tables. */
__attribute__((target("avx2"))) static inline void load_block_avx2(tok_block *b, const char *at,
                                                                   char sep) {
    b->base = at;
    const __m256i vq = _mm256_set1_epi8('"'), vl = _mm256_set1_epi8('\n');
    const __m256i vs = _mm256_set1_epi8(sep), vc = _mm256_set1_epi8('\r');
    const __m256i lo = _mm256_loadu_si256((const __m256i *)at);
    const __m256i hi = _mm256_loadu_si256((const __m256i *)(at + 32));
#define PS_MASK64(vlo, vhi)                                                                       \
    ((uint64_t)(uint32_t)_mm256_movemask_epi8(vlo) |                                              \
     (uint64_t)(uint32_t)_mm256_movemask_epi8(vhi) << 32)
    b->quote = PS_MASK64(_mm256_cmpeq_epi8(lo, vq), _mm256_cmpeq_epi8(hi, vq));
    b->lf = PS_MASK64(_mm256_cmpeq_epi8(lo, vl), _mm256_cmpeq_epi8(hi, vl));
    b->others = PS_MASK64(_mm256_or_si256(_mm256_cmpeq_epi8(lo, vs), _mm256_cmpeq_epi8(lo, vc)),
                          _mm256_or_si256(_mm256_cmpeq_epi8(hi, vs), _mm256_cmpeq_epi8(hi, vc)));
#undef PS_MASK64
}
#endif

/* One of the two loaders, chosen by a constant: the row splitter below is instantiated once
 * for each (the AVX2 one only where the CPU has it). */
static inline __attribute__((always_inline)) void load_block(tok_block *b, const char *at,
                                                             char sep, int avx2) {
#if defined(PS_AVX2)
    if (avx2) {
        load_block_avx2(b, at, sep);
        return;
    }
#endif
    (void)avx2;
    load_block_sse2(b, at, sep);
}

/* Splits the row at start into t->fields when it is ordinary: whole before end (which the
 * caller has already cut at the largest record allowed) with 64 bytes readable past every
 * place looked at, each quoted field closed by a quote that a separator or line end follows,
 * no quote or lone CR in a plain value, no more fields than the array holds. Returns the byte
 * after its line end; or NULL, and the general path in ps_tok_next parses the row (and names
 * any error) as if this had never run. What this accepts it splits exactly as that path does:
 * tests/test_tokenizer_blocks.py runs both on every kind of byte at every offset. */
static inline __attribute__((always_inline)) const char *
split_row(ps_tokenizer *t, const char *start, const char *end, size_t *nfields, int64_t *lines,
          const int avx2) {
    const char sep = t->separator;
    ps_field *fields = t->fields;
    const size_t cap = t->fields_cap;
    size_t nf = 0;
    int64_t feeds = 0;
    tok_block b;
    if (end - start < 64) return NULL;
    load_block(&b, start, sep, avx2);
    const char *p = start;
    for (;;) {
        if (nf == cap) return NULL;
        ps_field *f = &fields[nf++];
        if ((size_t)(p - b.base) >= 64) {
            if (end - p < 64) return NULL;
            load_block(&b, p, sep, avx2);
        }
        if (*p != '"') {
            const char *value = p;
            for (;;) {
                uint64_t m = (b.quote | b.lf | b.others) >> (p - b.base);
                if (m) {
                    p += __builtin_ctzll(m);
                    break;
                }
                p = b.base + 64;
                if (end - p < 64) return NULL;
                load_block(&b, p, sep, avx2);
            }
            f->data = value;
            f->len = (uint32_t)(p - value);
            f->quoted = f->escaped = f->special = 0;
        } else {
            const char *open = p, *q = p + 1;
            int escaped = 0, special = 0;
            for (;;) {
                if ((size_t)(q - b.base) >= 64) {
                    if (end - q < 64) return NULL;
                    load_block(&b, q, sep, avx2);
                }
                unsigned shift = (unsigned)(q - b.base);
                uint64_t quotes = b.quote >> shift;
                uint64_t before = quotes ? (quotes & (0 - quotes)) - 1 : ~(uint64_t)0;
                uint64_t feeds_here = (b.lf >> shift) & before;
                if (feeds_here | ((b.others >> shift) & before)) {
                    special = 1;
                    if (feeds_here) feeds += __builtin_popcountll(feeds_here);
                }
                if (!quotes) {
                    q = b.base + 64;
                    continue;
                }
                const char *hit = q + __builtin_ctzll(quotes);
                if (hit + 1 >= end) return NULL;
                if (hit[1] == '"') {
                    escaped = special = 1;
                    q = hit + 2;
                    continue;
                }
                p = hit + 1;
                break;
            }
            f->data = open + 1;
            f->len = (uint32_t)(p - open - 2);
            f->quoted = 1;
            f->escaped = (uint8_t)escaped;
            f->special = (uint8_t)special;
        }
        /* After a value: a separator, a line end, or what the general path must judge (a quote
         * or lone CR in a plain value, text after a closing quote: an error). */
        char c = *p;
        if (c == sep) {
            p++;
            continue;
        }
        if (c == '\n') {
            p++;
            break;
        }
        if (c == '\r' && p + 1 < end && p[1] == '\n') {
            p += 2;
            break;
        }
        return NULL;
    }
    *nfields = nf;
    *lines = feeds + 1;
    return p;
}

#if defined(PS_AVX2)
__attribute__((target("avx2"))) static const char *
split_row_avx2(ps_tokenizer *t, const char *start, const char *end, size_t *nf, int64_t *lines) {
    return split_row(t, start, end, nf, lines, 1);
}
#endif

static const char *tok_fast_row(ps_tokenizer *t, const char *start, const char *end,
                                size_t *nfields, int64_t *lines) {
#if defined(PS_AVX2)
    if (t->avx2) return split_row_avx2(t, start, end, nfields, lines);
#endif
    return split_row(t, start, end, nfields, lines, 0);
}
#endif

#define FAST_MISSES_BEFORE_PAUSE 4
#define FAST_PAUSE_ROWS 64

int ps_tok_next(ps_tokenizer *t, ps_record *rec, ps_error *err) {
    if (!t->bom_checked) {
        int st = check_start_of_file(t, err);
        if (st) return st;
    }
    if (!t->preamble_done) {
        int st = consume_preamble(t, err);
        if (st) return st;
    }
    if (!t->eof && t->len - t->pos < t->retry_at) return PS_TOK_NEED_MORE;

    const char sep = t->separator;
    int eof = t->eof;
    const int header = t->expected_fields == 0;
    const char *const buf = t->buf;
    const char *end = buf + t->len;
    const char *p = buf + t->pos;

    /* Blank lines are not records (docs/DESIGN.md); consume them for good. A lone CR is not a
     * line end, so it starts a record (of one value byte, at the end of the file). */
    for (;;) {
        if (p == end) {
            t->pos = (size_t)(p - buf);
            return eof ? PS_TOK_END : PS_TOK_NEED_MORE;
        }
        if (*p == '\n') {
            p++;
            t->line++;
        } else if (*p == '\r' && p + 1 == end && !eof) {
            t->pos = (size_t)(p - buf);
            return PS_TOK_NEED_MORE;
        } else if (*p == '\r' && p + 1 < end && p[1] == '\n') {
            p += 2;
            t->line++;
        } else {
            break;
        }
    }
    t->pos = (size_t)(p - buf);

    if (header) {
        /* Windows PowerShell's Export-Csv writes its type line above the header unless told
         * -NoTypeInformation; taken as the header it would make every row "too many fields". */
        if ((size_t)(end - p) < 6 && !eof) goto need_more;
        if ((size_t)(end - p) >= 6 && memcmp(p, "#TYPE ", 6) == 0)
            return ps_fail(err, t->error_code, t->line, t->base_offset + (p - buf),
                           "the %s line is PowerShell type information ('#TYPE ...'), not a "
                           "header: export with Export-Csv -NoTypeInformation (Windows PowerShell "
                           "5.1; PowerShell 7 writes the line only when given "
                           "-IncludeTypeInformation), or skip it with --skip-lines %lld",
                           t->skip_requested ? "header" : "first",
                           (long long)t->skip_requested + 1);
    }

    /* Scan no further than one byte past the largest record: a record that has not ended by
     * then is too large, whatever else it holds further on. So the error a long record gets
     * never depends on how much of it happens to be buffered. */
    if ((size_t)(end - p) > t->max_record + 1) {
        end = p + t->max_record + 1;
        eof = 0;
    }
    const char *const start = p;
    int64_t lines_inside = 0; /* LFs the record spans, its own line end included */
    size_t nf = 0;
    int fast_missed = 0;
#if defined(__SSE2__)
    if (!header && t->fast_pause > 0) {
        t->fast_pause--;
    } else if (!header) {
        const char *after = tok_fast_row(t, start, end, &nf, &lines_inside);
        if (after) {
            t->fast_misses = 0;
            p = after;
            goto parsed;
        }
        nf = 0;
        lines_inside = 0;
        fast_missed = 1;
    }
#endif
    for (;;) {
        if (nf == t->fields_cap) {
            if (nf >= t->max_fields) return fail_too_many_fields(t, header, err);
            size_t cap = 2 * t->fields_cap;
            if (cap > t->max_fields) cap = t->max_fields;
            ps_field *grown = realloc(t->fields, cap * sizeof *grown);
            if (!grown) return ps_fail(err, PS_ERR_NOMEM, t->line, -1, "out of memory for fields");
            t->fields = grown;
            t->fields_cap = cap;
        }
        ps_field *f = &t->fields[nf++];
        if (p < end && *p == '"') {
            /* One pass finds the closing quote and notes whether the value holds anything
             * that must be quoted again on output (doubled quotes, separators, CR, LF). */
            const char *open = p, *close;
            const char *q = p + 1;
            int escaped = 0, special = 0;
            for (;;) {
                const char *hit = scan_quoted(q, end, t, &special, &lines_inside);
                if (hit == end) {
                    if (!eof) goto need_more;
                    return ps_fail(err, t->error_code, t->line, t->base_offset + (open - buf),
                                   "unterminated quote");
                }
                if (hit + 1 == end && !eof) goto need_more;
                if (hit + 1 < end && hit[1] == '"') {
                    escaped = special = 1;
                    q = hit + 2;
                    continue;
                }
                close = hit;
                break;
            }
            f->data = open + 1;
            f->len = (uint32_t)(close - open - 1);
            f->quoted = 1;
            f->escaped = (uint8_t)escaped;
            f->special = (uint8_t)special;
            p = close + 1;
            if (p == end) break; /* only reachable at EOF */
            if (*p == sep) {
                p++;
                continue;
            }
            if (*p == '\n') {
                p++;
                lines_inside++;
                break;
            }
            if (*p == '\r') {
                if (p + 1 == end && !eof) goto need_more;
                if (p + 1 < end && p[1] == '\n') {
                    p += 2;
                    lines_inside++;
                    break;
                }
                if (header)
                    return ps_fail(err, t->error_code, t->line, t->base_offset + (p - buf),
                                   CR_ONLY_PROBLEM);
            }
            return ps_fail(err, t->error_code, t->line, t->base_offset + (p - buf),
                           "text after closing quote");
        }
        const char *value = p;
        int special = 0;
        int ends_record = 0;
        for (;;) {
            p = scan_plain(p, end, t);
            if (p == end) {
                if (!eof) goto need_more;
                f->data = value;
                f->len = (uint32_t)(p - value);
                ends_record = 1;
                break;
            }
            char c = *p;
            if (c == sep) {
                f->data = value;
                f->len = (uint32_t)(p - value);
                p++;
                break;
            }
            if (c == '\n') {
                f->data = value;
                f->len = (uint32_t)(p - value);
                p++;
                lines_inside++;
                ends_record = 1;
                break;
            }
            if (c == '\r') {
                if (p + 1 == end && !eof) goto need_more;
                if (p + 1 < end && p[1] == '\n') {
                    f->data = value;
                    f->len = (uint32_t)(p - value);
                    p += 2;
                    lines_inside++;
                    ends_record = 1;
                    break;
                }
                if (header)
                    return ps_fail(err, t->error_code, t->line, t->base_offset + (p - buf),
                                   CR_ONLY_PROBLEM);
            }
            special = 1; /* a quote, or a CR that does not end the line: kept as value bytes */
            p++;
        }
        f->quoted = 0;
        f->escaped = 0;
        f->special = (uint8_t)special;
        if (ends_record) break;
    }

parsed:;
    size_t bad;
    if (!utf8_valid(t, (const unsigned char *)start, (size_t)(p - start), &bad)) {
        unsigned char b = (unsigned char)start[bad];
        int64_t at = t->base_offset + (start - buf) + (int64_t)bad;
        if (!t->hints) return ps_fail(err, t->error_code, t->line, at, "invalid UTF-8");
        return ps_fail(err, t->error_code, t->line, at,
                       b < 0xA0 ? "invalid UTF-8 (byte 0x%02X: likely Windows-1252, read it with "
                                  "--encoding windows-1252)"
                                : "invalid UTF-8 (byte 0x%02X: likely a single-byte code page such "
                                  "as Windows-1252 or Latin-1, read it with --encoding NAME)",
                       b);
    }
    if (header) {
        t->expected_fields = nf; /* the header fixes the width of every row */
    } else if (nf != t->expected_fields) {
        char other = t->hints ? other_separator(t, start, p, t->expected_fields) : 0;
        if (other)
            return ps_fail(err, t->error_code, t->line, t->base_offset + (start - buf),
                           "expected %zu fields, found %zu (split on %s it has %zu: was it "
                           "written with that separator? --separator reads it)",
                           t->expected_fields, nf, other == '\t' ? "tabs" : other == ',' ? "','"
                           : other == ';' ? "';'" : "'|'", t->expected_fields);
        return ps_fail(err, t->error_code, t->line, t->base_offset + (start - buf),
                       "expected %zu fields, found %zu", t->expected_fields, nf);
    }
    /* A header's names are trimmed by the caller that reads them: its fields keep their spans,
     * so that errors about a name point at where it stands. */
    if (t->refine && !header) refine_fields(t, t->fields, nf);
    rec->fields = t->fields;
    rec->nfields = nf;
    rec->line = t->line;
    rec->offset = t->base_offset + (start - buf);
    t->line += lines_inside;
    t->pos = (size_t)(p - buf);
    t->retry_at = 0;
    /* A file whose rows the masks keep handing back (a bare quote late in every row, say)
     * would pay for both paths: after a few such rows in a row, the masks rest a while. */
    if (fast_missed && ++t->fast_misses == FAST_MISSES_BEFORE_PAUSE) {
        t->fast_misses = 0;
        t->fast_pause = FAST_PAUSE_ROWS;
    }
    return PS_TOK_RECORD;

need_more: {
    size_t unread = t->len - t->pos;
    if (unread > t->max_record) return fail_too_large(t, header, err);
    /* Parse again only once the unread part has grown enough that re-scanning a long record
     * costs linear time overall, not quadratic; but no later than the record limit, so that
     * the buffer never holds much more than a record may. */
    size_t step = unread < PS_MIN_RETRY_STEP ? 0 : unread;
    if (step > PS_MAX_RETRY_STEP) step = PS_MAX_RETRY_STEP;
    t->retry_at = unread + (step ? step : 1);
    if (t->retry_at > t->max_record + 1) t->retry_at = t->max_record + 1;
    return PS_TOK_NEED_MORE;
}
}
