/* Streaming RFC 4180 tokenizer.
 *
 * Bytes are fed in blocks of any size; ps_tok_next() hands out one complete record at a time
 * as field spans into the tokenizer's own buffer. A record cut by the end of a block is parsed
 * again from its start once more bytes (or the end of input) arrive, so the caller never sees
 * a partial record. A returned record lives inside the tokenizer: its field array is reused by
 * the next ps_tok_next(), and its spans point into the buffer, which the next ps_tok_reserve()
 * or ps_tok_feed() may slide or reallocate (ps_tok_release() frees it). So a record is valid
 * until the next call to any of those; ps_tok_commit() and ps_tok_set_eof() leave it intact.
 * A caller that keeps a row past that copies it out (the engine formats it into its arena).
 *
 * Dialect (REFERENCE §2 and docs/DESIGN.md): optional UTF-8 BOM dropped; LF or CRLF ends a record;
 * blank lines are skipped; a quoted field may hold separators, doubled quotes, CR and LF; a quote
 * inside an unquoted field and a CR not followed by LF (end of file included) are plain value
 * bytes. Every record is checked to be UTF-8 (the whole record at once: separators, quotes and
 * line ends are ASCII and can never sit inside a multi-byte sequence, so this equals checking
 * each field).
 *
 * Refused with their cause named, before they can pass for something else: a UTF-16/UTF-32
 * byte-order mark (only a baseline meets one: a source's is decoded before, see ps_decode.h), a
 * header line `#TYPE ...` (PowerShell's type information), and a bare CR outside quotes in the
 * header line (CR-only line ends: the whole file would read as one header line). The last is
 * caught at the first such CR, so it never depends on how much of the file is buffered.
 *
 * A source's dialect (ps_tok_set_dialect): lines before the header (an Excel `sep=X` first line,
 * which sets the separator, and --skip-lines), values to trim, the outputs' separator (when it
 * differs, or values are trimmed, `special` is recomputed for it: one pass per row, only then),
 * and errors that name their likely cause (an encoding, another separator).
 *
 * Memory: one record may hold at most max_record bytes and max_fields fields, both derived from
 * the memory budget (ps_record_limit, ps_field_limit); the buffer and the field array never grow
 * past what those need, and a record over either limit is an error naming the budget. */
#ifndef PS_TOKENIZER_H
#define PS_TOKENIZER_H

#include "ps_core.h"


typedef struct ps_field {
    const char *data; /* unquoted: the value; quoted: the bytes between the quotes */
    uint32_t len;
    uint8_t quoted;   /* was quoted in the input */
    uint8_t escaped;  /* quoted and holds doubled quotes: data is not the value as it is */
    uint8_t special;  /* the value holds the separator, a quote, CR or LF: quote it on output */
} ps_field;

typedef struct ps_record {
    ps_field *fields;
    size_t nfields;
    int64_t line;   /* physical line the record starts on */
    int64_t offset; /* file offset of its first byte */
} ps_record;

enum ps_tok_status { PS_TOK_RECORD = 0, PS_TOK_NEED_MORE = -1, PS_TOK_END = -2 };

/* The most ValuesToTrim entries a table may name (each one character). */
#define PS_MAX_TRIM 32

typedef struct ps_tokenizer {
    char separator;         /* the input's; an Excel `sep=X` first line may change it */
    char out_separator;     /* the outputs': `special` says whether a value needs quotes there */
    uint8_t stop[256]; /* bytes that end a run of plain value bytes */
    int eof;
    int bom_checked;
    char *buf;
    size_t cap, len, pos;   /* buf[pos, len) is not yet handed out */
    size_t retry_at;        /* after NEED_MORE, wait for this many unread bytes before retrying */
    int64_t base_offset;    /* file offset of buf[0] */
    int64_t line;           /* physical line of buf[pos] */
    ps_field *fields;
    size_t fields_cap;
    int error_code;         /* PS_ERR_INPUT normally; PS_ERR_BASELINE_CSV for a baseline */
    int avx2;               /* the masks and the UTF-8 check go 32 bytes a step (a debug build
                               takes the SSE2 and byte paths under PREPSYNC_DEBUG_NO_AVX2=1) */
    int fast_misses;        /* rows in a row the masks handed back to the general path */
    int fast_pause;         /* rows still to parse without trying the masks */
    size_t expected_fields; /* set by the first record (the header); 0 before it */
    size_t budget;          /* the memory budget the limits derive from (named in errors) */
    int budget_shares;      /* > 1: `budget` is one table's share of a budget split this many
                               ways (tables cleansed in parallel); errors say so */
    size_t max_record;      /* bytes of one record, line end included */
    size_t max_fields;      /* fields of one record */
    size_t initial_cap;
    /* Dialect (ps_tok_set_dialect; all off after ps_tok_init). Lines before the header:
     * skip_lines still to drop, and whether line 1 may be an Excel `sep=X` hint. */
    int64_t skip_lines, skip_requested;
    int sep_hint;
    int preamble_done;
    int hints;              /* input errors name the likely cause (encoding, separator) */
    int refine;             /* fields need trimming, or `special` recomputing (separators differ) */
    int ntrim;
    unsigned char trim_len[PS_MAX_TRIM];
    char trim[PS_MAX_TRIM][4]; /* ValuesToTrim: UTF-8 characters, trimmed in this order */
} ps_tokenizer;

typedef struct ps_dialect {
    int64_t skip_lines;     /* physical lines dropped before the header */
    int sep_hint;           /* honour an Excel `sep=X` first line */
    char out_separator;     /* 0: the input's separator */
    const char *trim;       /* entries, each a length byte (1-4) then that many UTF-8 bytes */
    size_t trim_bytes;
    int hints;
} ps_dialect;

/* The largest record and field count a budget affords: budget/16 bytes (never over
 * PS_MAX_RECORD, the largest row the reference server takes) and budget/512 fields (16 bytes
 * each), with floors that only matter below the 1 MiB the command line allows. */
#define PS_MAX_RECORD ((size_t)64 << 20)
size_t ps_record_limit(size_t memory_budget);
size_t ps_field_limit(size_t memory_budget);
/* "4 GiB", "16 MiB", "300 KiB" or "1000 bytes": sizes as errors show them. */
void ps_format_size(size_t n, char *out, size_t cap);

int ps_tok_init(ps_tokenizer *t, char separator, size_t initial_cap, size_t memory_budget,
                int error_code, ps_error *err);
void ps_tok_release(ps_tokenizer *t);
/* Before the first ps_tok_next(): the reading settings of a table (ps_dialect). */
int ps_tok_set_dialect(ps_tokenizer *t, const ps_dialect *d, ps_error *err);
/* 1 when c can separate fields: one ASCII byte other than a quote, CR or LF (or NUL). */
int ps_separator_ok(char c);
/* Append bytes to the buffer; data may be NULL with n == 0. */
int ps_tok_feed(ps_tokenizer *t, const char *data, size_t n, ps_error *err);
void ps_tok_set_eof(ps_tokenizer *t);
/* Room to read into directly: returns a pointer to at least `want` free bytes at the end. */
char *ps_tok_reserve(ps_tokenizer *t, size_t want, ps_error *err);
void ps_tok_commit(ps_tokenizer *t, size_t n);
/* PS_TOK_RECORD (rec filled, valid until the next ps_tok_next/reserve/feed/release),
 * PS_TOK_NEED_MORE, PS_TOK_END, or an error code (> 0). */
int ps_tok_next(ps_tokenizer *t, ps_record *rec, ps_error *err);

/* For a caller that recognises the next record by its bytes, without parsing it (the baseline
 * join knows its own canonical output): the unread bytes, valid until the next reserve, feed
 * or release; only meaningful after the first record (byte-order mark and header dealt with). */
static inline const char *ps_tok_unread(const ps_tokenizer *t, size_t *n) {
    *n = t->len - t->pos;
    return t->buf + t->pos;
}

/* Hands out n unread bytes unparsed: they must be whole records, line ends included, spanning
 * `lines` physical lines (LFs), so that later records and errors keep their line numbers. */
static inline void ps_tok_skip(ps_tokenizer *t, size_t n, int64_t lines) {
    t->pos += n;
    t->line += lines;
    t->retry_at = 0;
}

/* Copies n bytes. Most values are short, and a call to memcpy per field cost as much as the
 * copy: from 4 to 32 bytes two overlapping fixed-size moves cover any length, without reading
 * or writing a byte outside [src, src + n) and [out, out + n). */
static inline void ps_copy_bytes(char *out, const char *src, size_t n) {
    if (n > 32) {
        memcpy(out, src, n);
    } else if (n >= 16) {
        char head[16], tail[16];
        memcpy(head, src, 16);
        memcpy(tail, src + n - 16, 16);
        memcpy(out, head, 16);
        memcpy(out + n - 16, tail, 16);
    } else if (n >= 8) {
        uint64_t head, tail;
        memcpy(&head, src, 8);
        memcpy(&tail, src + n - 8, 8);
        memcpy(out, &head, 8);
        memcpy(out + n - 8, &tail, 8);
    } else if (n >= 4) {
        uint32_t head, tail;
        memcpy(&head, src, 4);
        memcpy(&tail, src + n - 4, 4);
        memcpy(out, &head, 4);
        memcpy(out + n - 4, &tail, 4);
    } else {
        for (size_t i = 0; i < n; i++) out[i] = src[i];
    }
}

/* Length of the value once doubled quotes are undone (== f->len unless escaped). */
static inline size_t ps_field_unescape(const ps_field *f, char *out) {
    if (!f->escaped) {
        ps_copy_bytes(out, f->data, f->len);
        return f->len;
    }
    size_t n = 0;
    for (uint32_t i = 0; i < f->len; i++) {
        out[n++] = f->data[i];
        if (f->data[i] == '"') i++; /* inside quotes a quote is always doubled */
    }
    return n;
}

#endif
