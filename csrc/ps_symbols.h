/* Functions of a shared library a loaded Python module already uses, found with dlsym: the
 * server's native readers call SQLite (through `_sqlite3`) and libpq (through psycopg's
 * compiled module) without linking either, so the process holds one copy of each library. */
#ifndef PS_SYMBOLS_H
#define PS_SYMBOLS_H

#include <stddef.h>

#include "ps_core.h"

typedef struct ps_symbol {
    const char *name;
    void **slot;
} ps_symbol;

/* Fills every slot from the module at `module_path`, which must already be loaded
 * (RTLD_NOLOAD: never a second copy): dlsym on its handle searches the module, then its
 * dependencies. PS_ERR_IO naming the first symbol missing; the handle stays open on success,
 * since the functions must outlive the call. */
int ps_symbols_resolve(const char *module_path, const ps_symbol *wanted, size_t count,
                       ps_error *err);

#endif
