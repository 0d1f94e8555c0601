#define _GNU_SOURCE

#include "ps_upload.h"

#include "ps_format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bytes read per read(2): big enough that syscalls vanish, small enough to stay cache-warm. */
#define PS_UPLOAD_READ_BLOCK ((size_t)1 << 20)

int ps_upload_open(ps_upload *u, const char *path, char separator, size_t max_record,
                   ps_error *err) {
    memset(u, 0, sizeof *u);
    u->fd = -1;
    u->read_block = PS_UPLOAD_READ_BLOCK;
    /* The tokenizer derives its record limit from a budget: budget/16 bytes. */
    int rc = ps_tok_init(&u->tok, separator, u->read_block, max_record * 16, PS_ERR_INPUT, err);
    if (rc) return rc;
    u->tok_ready = 1;
    /* Stored lines are ','-separated whatever the file's separator: the tokenizer judges
     * `special` (quote on output) against ',', so ps_field_format writes the stored quoting. */
    const ps_dialect stored = {.out_separator = ','};
    rc = ps_tok_set_dialect(&u->tok, &stored, err);
    if (rc) {
        ps_upload_close(u);
        return rc;
    }
    u->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (u->fd < 0) {
        int saved = errno;
        ps_upload_close(u);
        return ps_fail(err, PS_ERR_IO, 0, -1, "cannot read: %s", strerror(saved));
    }
    return PS_OK;
}

void ps_upload_close(ps_upload *u) {
    if (u->fd >= 0) close(u->fd);
    u->fd = -1;
    if (u->tok_ready) ps_tok_release(&u->tok);
    u->tok_ready = 0;
    free(u->key_cols);
    free(u->pair_cols);
    free(u->pair_rows);
    free(u->key);
    free(u->line);
    free(u->previous);
    free(u->copy);
    u->copy = NULL;
    u->copy_cap = u->copy_len = 0;
    u->key_cols = u->pair_cols = NULL;
    u->pair_rows = NULL;
    u->key = u->line = u->previous = NULL;
    u->key_cap = u->line_cap = u->previous_cap = 0;
}

int ps_upload_next(ps_upload *u, ps_record *rec, ps_error *err) {
    for (;;) {
        int st = ps_tok_next(&u->tok, rec, err);
        if (st != PS_TOK_NEED_MORE) return st;
        char *room = ps_tok_reserve(&u->tok, u->read_block, err);
        if (!room) return err->code;
        ssize_t got;
        do {
            got = read(u->fd, room, u->read_block);
        } while (got < 0 && errno == EINTR);
        if (got < 0) return ps_fail(err, PS_ERR_IO, 0, -1, "cannot read: %s", strerror(errno));
        if (got == 0)
            ps_tok_set_eof(&u->tok);
        else
            ps_tok_commit(&u->tok, (size_t)got);
    }
}

static size_t *copy_sizes(const size_t *values, size_t n) {
    size_t *out = malloc((n ? n : 1) * sizeof *out);
    if (out && n) memcpy(out, values, n * sizeof *out);
    return out;
}

int ps_upload_configure(ps_upload *u, const size_t *key_cols, size_t nkeys, int check_order,
                        const size_t *pair_cols, size_t npairs, ps_error *err) {
    free(u->key_cols);
    free(u->pair_cols);
    free(u->pair_rows);
    u->key_cols = copy_sizes(key_cols, nkeys);
    u->pair_cols = copy_sizes(pair_cols, 2 * npairs);
    u->pair_rows = calloc(npairs ? npairs : 1, sizeof *u->pair_rows);
    if (!u->key_cols || !u->pair_cols || !u->pair_rows)
        return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory");
    u->nkeys = nkeys;
    u->npairs = npairs;
    u->check_order = check_order;
    return PS_OK;
}

/* Make room for `need` bytes in *buf (capacity *cap); contents kept. */
static int reserve(char **buf, size_t *cap, size_t need, ps_error *err) {
    if (need <= *cap) return PS_OK;
    size_t grown = *cap ? *cap : 256;
    while (grown < need) grown *= 2;
    char *bigger = realloc(*buf, grown);
    if (!bigger) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a row");
    *buf = bigger;
    *cap = grown;
    return PS_OK;
}

size_t ps_key_line(const char *key, size_t key_len, char *scratch, char *out) {
    return ps_format_key(key, key_len, ',', scratch, out);
}

int ps_upload_record(ps_upload *u, ps_record *rec, ps_error *err) {
    int st = ps_upload_next(u, rec, err);
    if (st != PS_TOK_RECORD) return st;
    for (size_t i = 0; i < rec->nfields; i++) {
        const ps_field *f = &rec->fields[i];
        /* The tokenizer keeps a CR that does not end the line as a value byte; outside quotes
         * the server refuses it (it would read back as a line end). */
        if (!f->quoted && f->len && memchr(f->data, '\r', f->len))
            return ps_fail(err, PS_ERR_INPUT, rec->line, -1, "a CR outside quotes");
    }
    return PS_TOK_RECORD;
}

/* The key and the checks of a record ps_upload_record read (and its canonical line when
 * `build_line`): everything ps_upload_row does after the tokenizer. */
static int take_row(ps_upload *u, const ps_record *rec, int build_line, ps_error *err) {
    const int64_t line = rec->line;
    u->line_number = line;

    u->line_len = 0;
    if (build_line) {
        /* The line: at most 2 * len + 2 bytes a field, plus the commas. */
        size_t bound = rec->nfields;
        for (size_t i = 0; i < rec->nfields; i++) bound += 2 * (size_t)rec->fields[i].len + 2;
        if (reserve(&u->line, &u->line_cap, bound, err)) return err->code;
        size_t n = 0;
        for (size_t i = 0; i < rec->nfields; i++) {
            if (i) u->line[n++] = ',';
            n += ps_field_format(&rec->fields[i], u->line + n);
        }
        u->line_len = n;
    }

    /* The key: the values unescaped, 0x00 -> 0x00 0x01, each ended by 0x00 0x00. */
    size_t key_bound = 0;
    for (size_t k = 0; k < u->nkeys; k++) key_bound += 2 * (size_t)rec->fields[u->key_cols[k]].len + 2;
    if (reserve(&u->key, &u->key_cap, key_bound, err)) return err->code;
    size_t m = 0;
    for (size_t k = 0; k < u->nkeys; k++) {
        const ps_field *f = &rec->fields[u->key_cols[k]];
        if (f->len == 0) return ps_fail(err, PS_ERR_INPUT, line, -1, "null key");
        size_t start = m;
        m += ps_field_unescape(f, u->key + m);
        size_t value_len = m - start;
        if (memchr(u->key + start, '\0', value_len)) { /* rare: escape NULs, back to front */
            size_t nuls = 0;
            for (size_t i = 0; i < value_len; i++) nuls += u->key[start + i] == '\0';
            m += nuls;
            for (size_t i = value_len; i-- > 0;) {
                char ch = u->key[start + i];
                if (ch == '\0') {
                    u->key[start + i + nuls] = '\x01';
                    nuls--;
                    u->key[start + i + nuls] = '\0';
                } else {
                    u->key[start + i + nuls] = ch;
                }
            }
        }
        u->key[m++] = '\0';
        u->key[m++] = '\0';
    }
    u->key_len = m;

    if (u->check_order) {
        if (u->have_previous) {
            size_t common = m < u->previous_len ? m : u->previous_len;
            int cmp = memcmp(u->key, u->previous, common);
            if (cmp < 0 || (cmp == 0 && m <= u->previous_len))
                return ps_fail(err, PS_ERR_INPUT, line, -1, "%s",
                               cmp == 0 && m == u->previous_len ? "duplicate key"
                                                                : "not in key order");
        }
        if (reserve(&u->previous, &u->previous_cap, m, err)) return err->code;
        memcpy(u->previous, u->key, m);
        u->previous_len = m;
        u->have_previous = 1;
    }

    for (size_t p = 0; p < u->npairs; p++)
        u->pair_rows[p] += rec->fields[u->pair_cols[2 * p]].len != 0 &&
                           rec->fields[u->pair_cols[2 * p + 1]].len != 0;
    return PS_TOK_RECORD;
}

int ps_upload_row(ps_upload *u, ps_error *err) {
    ps_record rec;
    int st = ps_upload_record(u, &rec, err);
    if (st != PS_TOK_RECORD) return st;
    return take_row(u, &rec, 1, err);
}

/* PostgreSQL's binary COPY: an 11-byte signature, a 32-bit flags field (0: no OIDs) and a
 * 32-bit header extension length (0); a 16-bit field count of -1 ends the data. Integers are
 * big-endian (network order). */
static const char COPY_SIGNATURE[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

static inline void put_be16(char *out, uint16_t v) {
    out[0] = (char)(v >> 8);
    out[1] = (char)v;
}

static inline void put_be32(char *out, uint32_t v) {
    out[0] = (char)(v >> 24);
    out[1] = (char)(v >> 16);
    out[2] = (char)(v >> 8);
    out[3] = (char)v;
}

int ps_upload_copy_block(ps_upload *u, size_t target, int64_t *rows, ps_error *err) {
    u->copy_len = 0;
    *rows = 0;
    if (u->copy_state == 2) return PS_OK;
    if (u->copy_state == 0) {
        if (reserve(&u->copy, &u->copy_cap, target + sizeof COPY_SIGNATURE, err))
            return err->code;
        memcpy(u->copy, COPY_SIGNATURE, sizeof COPY_SIGNATURE);
        u->copy_len = sizeof COPY_SIGNATURE;
        u->copy_state = 1;
    }
    while (u->copy_len < target) {
        ps_record rec;
        int st = ps_upload_record(u, &rec, err);
        if (st == PS_TOK_END) {
            if (reserve(&u->copy, &u->copy_cap, u->copy_len + 2, err)) return err->code;
            put_be16(u->copy + u->copy_len, 0xFFFF);
            u->copy_len += 2;
            u->copy_state = 2;
            return PS_OK;
        }
        if (st != PS_TOK_RECORD) return st;
        st = take_row(u, &rec, 0, err);
        if (st != PS_TOK_RECORD) return st;
        /* A tuple: its field count, then per field its length and bytes, or -1: an empty
         * value (quoted or not) is NULL in this store. */
        if (rec.nfields > 0x7FFF)
            return ps_fail(err, PS_ERR_INPUT, rec.line, -1, "more than 32767 fields");
        size_t bound = 2 + 4 * rec.nfields;
        for (size_t i = 0; i < rec.nfields; i++) bound += rec.fields[i].len;
        if (reserve(&u->copy, &u->copy_cap, u->copy_len + bound, err)) return err->code;
        char *out = u->copy + u->copy_len;
        put_be16(out, (uint16_t)rec.nfields);
        out += 2;
        for (size_t i = 0; i < rec.nfields; i++) {
            const ps_field *f = &rec.fields[i];
            if (f->len == 0) {
                put_be32(out, 0xFFFFFFFFu);
                out += 4;
                continue;
            }
            size_t len = ps_field_unescape(f, out + 4);
            put_be32(out, (uint32_t)len);
            out += 4 + len;
        }
        u->copy_len = (size_t)(out - u->copy);
        (*rows)++;
    }
    return PS_OK;
}
