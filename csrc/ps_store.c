#define _GNU_SOURCE

#include "ps_store.h"
#include "ps_symbols.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

/* SQLite's C API, as sqlite3.h declares it (stable since SQLite 3.5/3.6). */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
#define SQLITE_OK 0
#define SQLITE_ROW 100
#define SQLITE_DONE 101
#define SQLITE_OPEN_READONLY 0x00000001
#define SQLITE_STATIC ((void (*)(void *))0)
#define SQLITE_TRANSIENT ((void (*)(void *))-1)

static struct {
    int loaded;
    int (*open_v2)(const char *, sqlite3 **, int, const char *);
    int (*close)(sqlite3 *);
    int (*busy_timeout)(sqlite3 *, int);
    int (*exec)(sqlite3 *, const char *, int (*)(void *, int, char **, char **), void *,
                char **);
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*bind_int64)(sqlite3_stmt *, int, int64_t);
    int (*bind_blob)(sqlite3_stmt *, int, const void *, int, void (*)(void *));
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*reset)(sqlite3_stmt *);
    int (*auto_extension)(void (*)(void));
    int (*cancel_auto_extension)(void (*)(void));
    int (*step)(sqlite3_stmt *);
    const void *(*column_blob)(sqlite3_stmt *, int);
    int (*column_bytes)(sqlite3_stmt *, int);
    int (*finalize)(sqlite3_stmt *);
    const char *(*errmsg)(sqlite3 *);
} api;

int ps_store_loaded(void) { return api.loaded; }

int ps_store_load(const char *module_path, ps_error *err) {
    if (api.loaded) return PS_OK;
    const ps_symbol wanted[] = {
        {"sqlite3_open_v2", (void **)&api.open_v2},
        {"sqlite3_close", (void **)&api.close},
        {"sqlite3_busy_timeout", (void **)&api.busy_timeout},
        {"sqlite3_exec", (void **)&api.exec},
        {"sqlite3_prepare_v2", (void **)&api.prepare_v2},
        {"sqlite3_bind_int64", (void **)&api.bind_int64},
        {"sqlite3_bind_blob", (void **)&api.bind_blob},
        {"sqlite3_bind_text", (void **)&api.bind_text},
        {"sqlite3_reset", (void **)&api.reset},
        {"sqlite3_auto_extension", (void **)&api.auto_extension},
        {"sqlite3_cancel_auto_extension", (void **)&api.cancel_auto_extension},
        {"sqlite3_step", (void **)&api.step},
        {"sqlite3_column_blob", (void **)&api.column_blob},
        {"sqlite3_column_bytes", (void **)&api.column_bytes},
        {"sqlite3_finalize", (void **)&api.finalize},
        {"sqlite3_errmsg", (void **)&api.errmsg},
    };
    int rc = ps_symbols_resolve(module_path, wanted, sizeof wanted / sizeof wanted[0], err);
    if (rc != PS_OK) return rc;
    api.loaded = 1;
    return PS_OK;
}

static int store_error(ps_store_rows *r, const char *what, ps_error *err) {
    const char *message = r->db ? api.errmsg((sqlite3 *)r->db) : "out of memory";
    int rc = ps_fail(err, PS_ERR_IO, 0, -1, "%s: %s", what, message);
    ps_store_rows_close(r);
    return rc;
}

int ps_store_rows_open(ps_store_rows *r, const char *path, int64_t tid, const char *after,
                       size_t after_len, ps_error *err) {
    memset(r, 0, sizeof *r);
    if (!api.loaded) return ps_fail(err, PS_ERR_ARG, 0, -1, "SQLite is not loaded");
    if (after_len > INT32_MAX) return ps_fail(err, PS_ERR_ARG, 0, -1, "key too long");
    sqlite3 *db = NULL;
    int rc = api.open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    r->db = db;
    if (rc != SQLITE_OK) return store_error(r, "cannot open the store", err);
    /* As the Python readers: wait for a writer's checkpoint rather than fail. */
    api.busy_timeout(db, 30000);
    if (api.exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return store_error(r, "cannot read the store", err);
    const char *sql = after ? "SELECT key, line FROM rows WHERE tid = ? AND key > ? ORDER BY key"
                            : "SELECT key, line FROM rows WHERE tid = ? ORDER BY key";
    sqlite3_stmt *stmt = NULL;
    if (api.prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
        return store_error(r, "cannot read the store", err);
    r->stmt = stmt;
    if (api.bind_int64(stmt, 1, tid) != SQLITE_OK ||
        (after && api.bind_blob(stmt, 2, after, (int)after_len, SQLITE_TRANSIENT) != SQLITE_OK))
        return store_error(r, "cannot read the store", err);
    return PS_OK;
}

int ps_store_rows_next(ps_store_rows *r, ps_error *err) {
    if (!r->stmt) return PS_TOK_END;
    sqlite3_stmt *stmt = (sqlite3_stmt *)r->stmt;
    int rc = api.step(stmt);
    if (rc == SQLITE_DONE) return PS_TOK_END;
    if (rc != SQLITE_ROW) return store_error(r, "cannot read the store", err);
    /* column_blob of the TEXT line is its UTF-8 bytes as stored: no conversion. Bytes are
     * asked for after the pointer, as SQLite's documentation prescribes. */
    r->key = api.column_blob(stmt, 0);
    r->key_len = (size_t)api.column_bytes(stmt, 0);
    r->line = api.column_blob(stmt, 1);
    r->line_len = (size_t)api.column_bytes(stmt, 1);
    if (!r->key) r->key = "";
    if (!r->line) r->line = "";
    return PS_TOK_RECORD;
}

void ps_store_rows_close(ps_store_rows *r) {
    if (r->stmt) api.finalize((sqlite3_stmt *)r->stmt);
    /* Closing ends the read transaction (rolled back: nothing was written). */
    if (r->db) api.close((sqlite3 *)r->db);
    r->stmt = r->db = NULL;
}

/* ------------------------------------------------------------------ the writer's bulk load */

/* SQLite calls its auto-extensions with the handle of every connection opened in the process,
 * in the thread that opens it: the only sanctioned way to learn the sqlite3 * behind a Python
 * sqlite3.Connection. Only the thread that asked captures (the flag is per thread). */
static _Thread_local int capturing;
static _Thread_local sqlite3 *captured;

static int capture_entry(sqlite3 *db, char **message, const void *routines) {
    (void)message;
    (void)routines;
    if (capturing) captured = db;
    return SQLITE_OK;
}

int ps_store_capture_begin(ps_error *err) {
    if (!api.loaded) return ps_fail(err, PS_ERR_ARG, 0, -1, "SQLite is not loaded");
    captured = NULL;
    capturing = 1;
    if (api.auto_extension((void (*)(void))capture_entry) != SQLITE_OK) {
        capturing = 0;
        return ps_fail(err, PS_ERR_IO, 0, -1, "sqlite3_auto_extension failed");
    }
    return PS_OK;
}

void *ps_store_capture_end(void) {
    capturing = 0;
    api.cancel_auto_extension((void (*)(void))capture_entry);
    void *db = captured;
    captured = NULL;
    return db;
}

/* Rows per statement of the bulk load: within one statement SQLite keeps its cursor on the
 * last row inserted, and a key above it is appended without a descent from the root. */
#define PS_LOAD_ROWS 64

static int prepare_insert(sqlite3 *db, int rows, sqlite3_stmt **stmt, ps_error *err) {
    char sql[96 + PS_LOAD_ROWS * 24];
    int n = snprintf(sql, sizeof sql, "INSERT INTO rows (tid, key, line, seq) VALUES ");
    for (int i = 0; i < rows; i++)
        n += snprintf(sql + n, sizeof sql - (size_t)n, "%s(?1, ?%d, ?%d, ?2)", i ? "," : "",
                      3 + 2 * i, 4 + 2 * i);
    if (api.prepare_v2(db, sql, -1, stmt, NULL) != SQLITE_OK)
        return ps_fail(err, PS_ERR_IO, 0, -1, "%s", api.errmsg(db));
    return PS_OK;
}

/* One group of rows, copied out of the reader (whose buffers hold one row at a time). */
typedef struct load_group {
    char *bytes;
    size_t used, cap;
    size_t key_at[PS_LOAD_ROWS], key_len[PS_LOAD_ROWS], line_at[PS_LOAD_ROWS],
        line_len[PS_LOAD_ROWS];
    int rows;
} load_group;

static int group_add(load_group *g, const ps_upload *u, int key_only, ps_error *err) {
    size_t line_len = key_only ? 0 : u->line_len;
    size_t need = g->used + u->key_len + line_len;
    if (need > g->cap) {
        size_t cap = g->cap ? g->cap : 64 * 1024;
        while (cap < need) cap *= 2;
        char *bigger = realloc(g->bytes, cap);
        if (!bigger) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a row");
        g->bytes = bigger;
        g->cap = cap;
    }
    g->key_at[g->rows] = g->used;
    g->key_len[g->rows] = u->key_len;
    memcpy(g->bytes + g->used, u->key, u->key_len);
    g->used += u->key_len;
    g->line_at[g->rows] = g->used;
    g->line_len[g->rows] = line_len;
    if (line_len) memcpy(g->bytes + g->used, u->line, line_len);
    g->used += line_len;
    g->rows++;
    return PS_OK;
}

/* Bind rows [first, first + count) of the group from parameter `at` on and step once. */
static int group_step(sqlite3 *db, sqlite3_stmt *stmt, const load_group *g, int first, int count,
                      int64_t tid, int64_t seq, ps_error *err) {
    int ok = api.bind_int64(stmt, 1, tid) == SQLITE_OK && api.bind_int64(stmt, 2, seq) == SQLITE_OK;
    for (int i = 0; ok && i < count; i++) {
        int row = first + i;
        /* STATIC: the group's bytes stay put until after the step; the line is UTF-8 (the
         * tokenizer checked the record), stored as TEXT. */
        ok = api.bind_blob(stmt, 3 + 2 * i, g->bytes + g->key_at[row], (int)g->key_len[row],
                           SQLITE_STATIC) == SQLITE_OK &&
             api.bind_text(stmt, 4 + 2 * i, g->bytes + g->line_at[row], (int)g->line_len[row],
                           SQLITE_STATIC) == SQLITE_OK;
    }
    /* A failed step: interrupted, disk full, I/O error; the message is the store's. */
    int rc = ok && api.step(stmt) == SQLITE_DONE ? PS_OK
                                                 : ps_fail(err, PS_ERR_IO, 0, -1, "%s", api.errmsg(db));
    api.reset(stmt);
    return rc;
}

int ps_store_bulk_load(void *handle, ps_upload *u, int64_t tid, int64_t seq, int key_only,
                       int64_t *rows, ps_error *err) {
    sqlite3 *db = handle;
    *rows = 0;
    if (!api.loaded || !db) return ps_fail(err, PS_ERR_ARG, 0, -1, "no native writer");
    sqlite3_stmt *group_insert = NULL, *row_insert = NULL;
    load_group *g = calloc(1, sizeof *g);
    if (!g) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory");
    int rc = prepare_insert(db, PS_LOAD_ROWS, &group_insert, err);
    if (!rc) rc = prepare_insert(db, 1, &row_insert, err);
    int end = 0;
    while (!rc && !end) {
        g->rows = 0;
        g->used = 0;
        while (!rc && g->rows < PS_LOAD_ROWS) {
            int st = ps_upload_row(u, err);
            if (st == PS_TOK_END) {
                end = 1;
                break;
            }
            if (st != PS_TOK_RECORD)
                rc = st;
            else if (u->key_len > INT32_MAX || u->line_len > INT32_MAX)
                rc = ps_fail(err, PS_ERR_INPUT, u->line_number, -1, "row too large");
            else
                rc = group_add(g, u, key_only, err);
        }
        if (rc) break;
        if (g->rows == PS_LOAD_ROWS) {
            rc = group_step(db, group_insert, g, 0, PS_LOAD_ROWS, tid, seq, err);
        } else {
            for (int i = 0; !rc && i < g->rows; i++)
                rc = group_step(db, row_insert, g, i, 1, tid, seq, err);
        }
        if (!rc) *rows += g->rows;
    }
    if (group_insert) api.finalize(group_insert);
    if (row_insert) api.finalize(row_insert);
    free(g->bytes);
    free(g);
    return rc;
}
