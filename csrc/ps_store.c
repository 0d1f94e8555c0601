#define _GNU_SOURCE

#include "ps_store.h"

#include <dlfcn.h>
#include <stdint.h>

/* SQLite's C API, as sqlite3.h declares it (stable since SQLite 3.5/3.6). */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
#define SQLITE_OK 0
#define SQLITE_ROW 100
#define SQLITE_DONE 101
#define SQLITE_OPEN_READONLY 0x00000001
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
    int (*step)(sqlite3_stmt *);
    const void *(*column_blob)(sqlite3_stmt *, int);
    int (*column_bytes)(sqlite3_stmt *, int);
    int (*finalize)(sqlite3_stmt *);
    const char *(*errmsg)(sqlite3 *);
} api;

int ps_store_loaded(void) { return api.loaded; }

int ps_store_load(const char *module_path, ps_error *err) {
    if (api.loaded) return PS_OK;
    /* RTLD_NOLOAD: the module Python loaded, never a second copy. dlsym on its handle searches
     * the module and then its dependencies (the libsqlite3 it is linked with). */
    void *handle = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) return ps_fail(err, PS_ERR_IO, 0, -1, "%s is not loaded", module_path);
    struct {
        const char *name;
        void **slot;
    } wanted[] = {
        {"sqlite3_open_v2", (void **)&api.open_v2},
        {"sqlite3_close", (void **)&api.close},
        {"sqlite3_busy_timeout", (void **)&api.busy_timeout},
        {"sqlite3_exec", (void **)&api.exec},
        {"sqlite3_prepare_v2", (void **)&api.prepare_v2},
        {"sqlite3_bind_int64", (void **)&api.bind_int64},
        {"sqlite3_bind_blob", (void **)&api.bind_blob},
        {"sqlite3_step", (void **)&api.step},
        {"sqlite3_column_blob", (void **)&api.column_blob},
        {"sqlite3_column_bytes", (void **)&api.column_bytes},
        {"sqlite3_finalize", (void **)&api.finalize},
        {"sqlite3_errmsg", (void **)&api.errmsg},
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        *wanted[i].slot = dlsym(handle, wanted[i].name);
        if (!*wanted[i].slot) {
            dlclose(handle);
            return ps_fail(err, PS_ERR_IO, 0, -1, "%s: no %s", module_path, wanted[i].name);
        }
    }
    /* The handle stays open: the functions must outlive this call (the module is never
     * unloaded anyway). */
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
