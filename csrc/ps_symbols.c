#include "ps_symbols.h"

#include <dlfcn.h>

int ps_symbols_resolve(const char *module_path, const ps_symbol *wanted, size_t count,
                       ps_error *err) {
    void *handle = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) return ps_fail(err, PS_ERR_IO, 0, -1, "%s is not loaded", module_path);
    for (size_t i = 0; i < count; i++) {
        *wanted[i].slot = dlsym(handle, wanted[i].name);
        if (!*wanted[i].slot) {
            dlclose(handle);
            return ps_fail(err, PS_ERR_IO, 0, -1, "%s: no %s", module_path, wanted[i].name);
        }
    }
    return PS_OK;
}
