/* The PostgreSQL store's stored rows for the complete session's merge-join (FullDiff in
 * prepsync/_upload.pyx): the output of `COPY (SELECT <columns> FROM <table> ORDER BY <key>)
 * TO STDOUT (FORMAT binary)`, turned into what the SQLite store's reader hands out, the
 * encoded key and the canonical line of each row, with no Python object per row.
 *
 * Binary rather than CSV output: PostgreSQL writes it a quarter faster (no per-byte quoting
 * scan; 1.1 s against 1.5 s for 116 MB here), each value arrives as its exact bytes (NULL is
 * a length of -1, so NULL and an empty string are told apart, and no value is ever mistaken for
 * COPY's `\.` end marker), and parsing it is a length read per field.
 *
 * The stream (PostgreSQL's binary COPY format): an 11-byte signature, a 32-bit flags word, a
 * 32-bit header-extension length and that many bytes; then per row a 16-bit field count and per
 * field a 32-bit length (-1: NULL) and the bytes; a count of -1 ends it. Integers are big-endian.
 *
 * Bytes come from either source, the caller's choice:
 *   - libpq itself (ps_pgcopy_fill): the connection psycopg opened (its PGconn pointer), after
 *     psycopg sent the COPY and saw it start. libpq is the one psycopg's module is linked with,
 *     resolved at run time (ps_pgcopy_load, as ps_store.h does for SQLite): nothing linked, no
 *     libpq header needed. After the last row it reads the COPY's final result, so the
 *     connection is idle in its transaction again, as psycopg expects;
 *   - the caller's blocks (ps_pgcopy_feed / ps_pgcopy_feed_end), cut anywhere: where libpq
 *     cannot be resolved (psycopg's pure-Python build), and for the tests.
 *
 * Per row: the key (each key column's value, 0x00 escaped as 0x00 0x01, then 0x00 0x00: the
 * store's encode_key), the line (the values joined by ',', quoted only when they hold ',', a
 * quote, CR or LF, quotes doubled; NULL and empty alike are an empty field: the SQLite store's
 * canonical line), and a check that keys strictly ascend (the merge-join's premise: a table whose
 * key lost its `COLLATE "C"` would otherwise give wrong changes, silently). */
#ifndef PS_PGCOPY_H
#define PS_PGCOPY_H

#include "ps_core.h"
#include "ps_tokenizer.h" /* PS_TOK_RECORD, PS_TOK_NEED_MORE, PS_TOK_END */

typedef struct ps_pgcopy {
    void *conn;          /* PGconn *, or NULL when fed by the caller */
    char *buf;           /* buf[pos, len): bytes not parsed yet */
    size_t cap, len, pos;
    int eof;             /* no more bytes will come */
    int header_done;
    int ended;           /* the trailer was read */
    size_t nfields;
    size_t nkeys;
    size_t *key_cols;
    int32_t *value_len;  /* per field of the row being read: its length, -1 for NULL */
    size_t *value_at;    /* per field: where its bytes start in the row */
    /* The last row read: */
    char *key;
    size_t key_len, key_cap;
    char *line;
    size_t line_len, line_cap;
    char *previous;
    size_t previous_len, previous_cap;
    int have_previous;
    int64_t rows;
    /* After a failed COPY: PostgreSQL's SQLSTATE ("" when not known). */
    char sqlstate[6];
} ps_pgcopy;

/* Resolve libpq through the loaded module at `module_path`; PS_OK or PS_ERR_IO with why not. */
int ps_pgcopy_load(const char *module_path, ps_error *err);
int ps_pgcopy_loaded(void);
/* `conn`: a PGconn * in the COPY OUT state (needs ps_pgcopy_load), or NULL to be fed. Rows have
 * `nfields` columns; `key_cols` are the key's positions among them. */
int ps_pgcopy_open(ps_pgcopy *c, void *conn, size_t nfields, const size_t *key_cols,
                   size_t nkeys, ps_error *err);
void ps_pgcopy_close(ps_pgcopy *c);
/* Fed mode: more bytes (any cut), then the end. */
int ps_pgcopy_feed(ps_pgcopy *c, const char *data, size_t n, ps_error *err);
void ps_pgcopy_feed_end(ps_pgcopy *c);
/* libpq mode: read rows from the connection until some hundreds of KiB wait or the COPY is over
 * (then its result is read too). Blocks on the network: call it without the GIL. PS_OK, or
 * PS_ERR_IO with PostgreSQL's message (and c->sqlstate). */
int ps_pgcopy_fill(ps_pgcopy *c, ps_error *err);
/* The next row: PS_TOK_RECORD (c->key, c->line set, valid until the next call), PS_TOK_END,
 * PS_TOK_NEED_MORE (fill or feed, then call again), or PS_ERR_INPUT for a malformed stream or
 * keys out of order. */
int ps_pgcopy_row(ps_pgcopy *c, ps_error *err);

#endif
