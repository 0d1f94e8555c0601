/* The server's native read of a table's stored rows (store.sqlite3, table `rows`), in key
 * order, for the complete session's merge-join (FullDiff in prepsync/_upload.pyx): no Python
 * object per stored row.
 *
 * It runs on the very SQLite library Python's sqlite3 module runs on: ps_store_load() takes
 * the path of that module (`_sqlite3.__file__`, already loaded) and resolves the dozen SQLite
 * functions it needs from it and its dependencies with dlsym. Nothing is linked and no SQLite
 * header is needed to build (the prototypes below are SQLite's stable C API). One library in
 * the process matters: two copies of SQLite on one database file would not see each other's
 * POSIX locks, and closing a descriptor in one drops the other's. When the symbols cannot be
 * found (a Python whose sqlite3 embeds SQLite without exporting it), ps_store_load fails and
 * the caller reads the rows through Python instead.
 *
 * The bulk load of an initial session (every row an insert into an empty table) runs through
 * the worker's own connection, whose handle ps_store_capture_* learn when it is opened, inside
 * the transaction the worker opened on it: the rows go in with the rest of the session's
 * changes and its `applied` mark, all or nothing.
 *
 * A reader opens its own read-only connection and one read transaction: it sees the store as
 * last committed, like prepsync.server.store.snapshot(), while the worker writes through its
 * own connection. Errors fill the ps_error with PS_ERR_IO and SQLite's message. */
#ifndef PS_STORE_H
#define PS_STORE_H

#include "ps_core.h"
#include "ps_tokenizer.h" /* PS_TOK_RECORD, PS_TOK_END */
#include "ps_upload.h"

typedef struct ps_store_rows {
    void *db;   /* sqlite3 * */
    void *stmt; /* sqlite3_stmt * */
    /* The current row, valid until the next ps_store_rows_next or close: */
    const char *key;
    size_t key_len;
    const char *line;
    size_t line_len;
} ps_store_rows;

/* Resolve SQLite from the loaded module at `module_path`; PS_OK, or PS_ERR_IO with why not. */
int ps_store_load(const char *module_path, ps_error *err);
/* 1 once ps_store_load succeeded. */
int ps_store_loaded(void);
/* Open `path` read-only and start the scan of table `tid` in key order, from just above
 * `after` (after_len bytes) when `after` is not NULL. */
int ps_store_rows_open(ps_store_rows *r, const char *path, int64_t tid, const char *after,
                       size_t after_len, ps_error *err);
/* The next row: PS_TOK_RECORD with key/line set, PS_TOK_END after the last, or PS_ERR_IO. */
int ps_store_rows_next(ps_store_rows *r, ps_error *err);
void ps_store_rows_close(ps_store_rows *r);

/* The writer's handle: between ps_store_capture_begin() and ps_store_capture_end(), the first
 * connection this thread opens (Python's sqlite3.connect) is recorded, through an SQLite
 * auto-extension; end returns it (NULL when none was opened). */
int ps_store_capture_begin(ps_error *err);
void *ps_store_capture_end(void);
/* Every remaining row of the configured reader `u` inserted into table `tid` (seq `seq`;
 * `key_only`: with an empty line, for a table whose line only repeats its key)
 * through the captured connection `db`, inside the transaction its owner opened; *rows is the
 * count inserted. A bad row is the reader's error (PS_ERR_INPUT with its line); a store error
 * (interrupted, disk full, I/O) is PS_ERR_IO with SQLite's message. */
int ps_store_bulk_load(void *db, ps_upload *u, int64_t tid, int64_t seq, int key_only,
                       int64_t *rows, ps_error *err);

#endif
