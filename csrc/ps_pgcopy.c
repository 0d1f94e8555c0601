#define _GNU_SOURCE

#include "ps_pgcopy.h"

#include "ps_format.h"
#include "ps_symbols.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* libpq's C API as libpq-fe.h declares it (stable since PostgreSQL 7.4). */
#define PGRES_COMMAND_OK 1
#define PG_DIAG_SQLSTATE 'C'

/* Unparsed bytes a fill gathers before it hands back: enough that the GIL is taken and given
 * back once per some thousand rows, little enough to stay in cache. */
#define PS_PGCOPY_FILL ((size_t)256 << 10)

static const char SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};

static struct {
    int loaded;
    int (*get_copy_data)(void *, char **, int);
    void (*freemem)(void *);
    void *(*get_result)(void *);
    int (*result_status)(const void *);
    char *(*result_error_message)(const void *);
    char *(*result_error_field)(const void *, int);
    void (*clear)(void *);
    char *(*error_message)(const void *);
} pq;

int ps_pgcopy_loaded(void) { return pq.loaded; }

int ps_pgcopy_load(const char *module_path, ps_error *err) {
    if (pq.loaded) return PS_OK;
    const ps_symbol wanted[] = {
        {"PQgetCopyData", (void **)&pq.get_copy_data},
        {"PQfreemem", (void **)&pq.freemem},
        {"PQgetResult", (void **)&pq.get_result},
        {"PQresultStatus", (void **)&pq.result_status},
        {"PQresultErrorMessage", (void **)&pq.result_error_message},
        {"PQresultErrorField", (void **)&pq.result_error_field},
        {"PQclear", (void **)&pq.clear},
        {"PQerrorMessage", (void **)&pq.error_message},
    };
    int rc = ps_symbols_resolve(module_path, wanted, sizeof wanted / sizeof wanted[0], err);
    if (rc != PS_OK) return rc;
    pq.loaded = 1;
    return PS_OK;
}

int ps_pgcopy_open(ps_pgcopy *c, void *conn, size_t nfields, const size_t *key_cols,
                   size_t nkeys, ps_error *err) {
    memset(c, 0, sizeof *c);
    if (conn && !pq.loaded) return ps_fail(err, PS_ERR_ARG, 0, -1, "libpq is not loaded");
    if (nfields == 0 || nfields > INT16_MAX || nkeys == 0)
        return ps_fail(err, PS_ERR_ARG, 0, -1, "bad column count");
    for (size_t k = 0; k < nkeys; k++)
        if (key_cols[k] >= nfields) return ps_fail(err, PS_ERR_ARG, 0, -1, "bad key column");
    c->key_cols = malloc(nkeys * sizeof *c->key_cols);
    c->value_len = malloc(nfields * sizeof *c->value_len);
    c->value_at = malloc(nfields * sizeof *c->value_at);
    if (!c->key_cols || !c->value_len || !c->value_at) {
        ps_pgcopy_close(c);
        return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory");
    }
    memcpy(c->key_cols, key_cols, nkeys * sizeof *c->key_cols);
    c->conn = conn;
    c->nfields = nfields;
    c->nkeys = nkeys;
    return PS_OK;
}

void ps_pgcopy_close(ps_pgcopy *c) {
    free(c->buf);
    free(c->key_cols);
    free(c->value_len);
    free(c->value_at);
    free(c->key);
    free(c->line);
    free(c->previous);
    memset(c, 0, sizeof *c);
}

/* Make room for `need` bytes in *buf (capacity *cap); contents kept. */
static int reserve(char **buf, size_t *cap, size_t need, ps_error *err) {
    if (need <= *cap) return PS_OK;
    size_t grown = *cap ? *cap : 256;
    while (grown < need) grown *= 2;
    char *bigger = realloc(*buf, grown);
    if (!bigger) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a stored row");
    *buf = bigger;
    *cap = grown;
    return PS_OK;
}

static int append(ps_pgcopy *c, const char *data, size_t n, ps_error *err) {
    if (c->pos && c->pos == c->len) {
        c->pos = c->len = 0;
    } else if (c->pos && c->len + n > c->cap) { /* slide the unparsed bytes to the front */
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    if (reserve(&c->buf, &c->cap, c->len + n, err)) return err->code;
    if (n) memcpy(c->buf + c->len, data, n);
    c->len += n;
    return PS_OK;
}

int ps_pgcopy_feed(ps_pgcopy *c, const char *data, size_t n, ps_error *err) {
    if (c->eof) return ps_fail(err, PS_ERR_ARG, 0, -1, "fed after the end");
    return append(c, data, n, err);
}

void ps_pgcopy_feed_end(ps_pgcopy *c) { c->eof = 1; }

/* The COPY's results after its data: PGRES_COMMAND_OK, or the error that ended it (a cancel,
 * a lost connection). Leaves the connection idle, as psycopg expects after a COPY. */
static int finish_copy(ps_pgcopy *c, ps_error *err) {
    int rc = PS_OK;
    void *res;
    while ((res = pq.get_result(c->conn)) != NULL) {
        if (rc == PS_OK && pq.result_status(res) != PGRES_COMMAND_OK) {
            const char *state = pq.result_error_field(res, PG_DIAG_SQLSTATE);
            if (state) {
                strncpy(c->sqlstate, state, sizeof c->sqlstate - 1);
                c->sqlstate[sizeof c->sqlstate - 1] = '\0';
            }
            const char *message = pq.result_error_message(res);
            rc = ps_fail(err, PS_ERR_IO, 0, -1, "%s", message && *message ? message : "COPY failed");
        }
        pq.clear(res);
    }
    return rc;
}

int ps_pgcopy_fill(ps_pgcopy *c, ps_error *err) {
    if (!c->conn) return ps_fail(err, PS_ERR_ARG, 0, -1, "not reading from a connection");
    while (!c->eof && c->len - c->pos < PS_PGCOPY_FILL) {
        char *data = NULL;
        int got = pq.get_copy_data(c->conn, &data, 0);
        if (got > 0) {
            int rc = append(c, data, (size_t)got, err);
            pq.freemem(data);
            if (rc) return rc;
        } else if (got == -1) { /* the data is over */
            c->eof = 1;
            return finish_copy(c, err);
        } else {
            c->eof = 1;
            const char *message = pq.error_message(c->conn);
            return ps_fail(err, PS_ERR_IO, 0, -1, "%s",
                           message && *message ? message : "COPY data could not be read");
        }
    }
    return PS_OK;
}

static inline uint16_t be16(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint16_t)((u[0] << 8) | u[1]);
}

static inline uint32_t be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

static int malformed(ps_error *err, const char *what) {
    return ps_fail(err, PS_ERR_INPUT, 0, -1, "the stored rows' COPY stream: %s", what);
}

/* Not enough bytes at hand: more may come, or the stream is cut short. */
static int short_of_bytes(ps_pgcopy *c, ps_error *err) {
    return c->eof ? malformed(err, "cut short") : PS_TOK_NEED_MORE;
}

int ps_pgcopy_row(ps_pgcopy *c, ps_error *err) {
    if (c->ended) return PS_TOK_END;
    const char *at = c->buf + c->pos;
    size_t have = c->len - c->pos;
    if (!c->header_done) {
        if (have < 19) return short_of_bytes(c, err);
        if (memcmp(at, SIGNATURE, sizeof SIGNATURE)) return malformed(err, "no binary signature");
        uint32_t extension = be32(at + 15);
        if (extension > have - 19) {
            if (extension > (1u << 20)) return malformed(err, "header extension too long");
            return short_of_bytes(c, err);
        }
        c->pos += 19 + extension;
        c->header_done = 1;
        at = c->buf + c->pos;
        have = c->len - c->pos;
    }
    if (have < 2) return short_of_bytes(c, err);
    int16_t count = (int16_t)be16(at);
    if (count == -1) {
        c->pos += 2;
        c->ended = 1;
        return PS_TOK_END;
    }
    if (count < 0 || (size_t)count != c->nfields) return malformed(err, "a row of another width");
    /* First pass: the row must be whole before anything is built from it; it notes where
     * each value is, for the line and the key. */
    size_t offset = 2, bound = c->nfields;
    for (size_t i = 0; i < c->nfields; i++) {
        if (have - offset < 4) return short_of_bytes(c, err);
        int32_t flen = (int32_t)be32(at + offset);
        offset += 4;
        c->value_len[i] = flen;
        c->value_at[i] = offset;
        if (flen == -1) continue;
        if (flen < 0) return malformed(err, "a negative length");
        if (have - offset < (size_t)flen) return short_of_bytes(c, err);
        offset += (size_t)flen;
        bound += 2 * (size_t)flen + 2;
    }
    if (reserve(&c->line, &c->line_cap, bound, err)) return err->code;
    size_t n = 0;
    for (size_t i = 0; i < c->nfields; i++) {
        if (i) c->line[n++] = ',';
        if (c->value_len[i] > 0) /* the stored line's quoting, a session file's (ps_format.h) */
            n += ps_format_value(at + c->value_at[i], (size_t)c->value_len[i], ',', c->line + n);
    }
    c->line_len = n;
    /* The key: each key value's bytes (0x00 -> 0x00 0x01; PostgreSQL's text never holds one,
     * but the encoding is the store's), then 0x00 0x00. */
    size_t key_bound = 0;
    for (size_t k = 0; k < c->nkeys; k++) {
        int32_t flen = c->value_len[c->key_cols[k]];
        key_bound += 2 * (flen > 0 ? (size_t)flen : 0) + 2;
    }
    if (reserve(&c->key, &c->key_cap, key_bound, err)) return err->code;
    size_t m = 0;
    for (size_t k = 0; k < c->nkeys; k++) {
        int32_t flen = c->value_len[c->key_cols[k]];
        const char *value = at + c->value_at[c->key_cols[k]];
        for (int32_t i = 0; i < flen; i++) {
            c->key[m++] = value[i];
            if (value[i] == '\0') c->key[m++] = '\x01';
        }
        c->key[m++] = '\0';
        c->key[m++] = '\0';
    }
    c->key_len = m;
    if (c->have_previous) {
        size_t common = m < c->previous_len ? m : c->previous_len;
        int cmp = memcmp(c->key, c->previous, common);
        if (cmp < 0 || (cmp == 0 && m <= c->previous_len))
            return malformed(err, "keys not in ascending order (is the key column's collation "
                                  "still \"C\"?)");
    }
    if (reserve(&c->previous, &c->previous_cap, m, err)) return err->code;
    memcpy(c->previous, c->key, m);
    c->previous_len = m;
    c->have_previous = 1;
    c->pos += offset;
    c->rows++;
    return PS_TOK_RECORD;
}
