"""Builds the native core. PREPSYNC_DEBUG=1 builds it with -O0 -g and the address and
undefined-behaviour sanitizers (run Python with libasan preloaded: see the Makefile)."""

import os
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("PREPSYNC_DEBUG") == "1"

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-function", "-pthread"]
link_args: list[str] = ["-pthread"]
macros = [("PREPSYNC_DEBUG_BUILD", "1" if DEBUG else "0")]
if DEBUG:
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    compile_args += ["-O0", "-g", *sanitize]
    link_args += sanitize
else:
    compile_args += ["-O3"]

# The server's upload reader and store readers are their own extension (they need only the
# tokenizer and the core; the store readers find SQLite and libpq at run time, see
# csrc/ps_store.h and csrc/ps_pgcopy.h).
SERVER_ONLY = ["csrc/ps_upload.c", "csrc/ps_store.c", "csrc/ps_pgcopy.c", "csrc/ps_symbols.c"]
UPLOAD_SOURCES = [*SERVER_ONLY, "csrc/ps_tokenizer.c", "csrc/ps_core.c"]
core_sources = sorted(source for source in glob("csrc/*.c") if source not in SERVER_ONLY)
core_headers = sorted(glob("csrc/*.h"))

extensions = [
    Extension(
        "prepsync._cleanse",
        sources=["prepsync/_cleanse.pyx", *core_sources],
        include_dirs=["csrc"],
        depends=[*core_headers, "prepsync/_native.pxd"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    ),
    Extension(
        "prepsync._upload",
        sources=["prepsync/_upload.pyx", *UPLOAD_SOURCES],
        include_dirs=["csrc"],
        depends=[
            "csrc/ps_upload.h",
            "csrc/ps_format.h",
            "csrc/ps_store.h",
            "csrc/ps_pgcopy.h",
            "csrc/ps_symbols.h",
            "csrc/ps_tokenizer.h",
            "csrc/ps_core.h",
            "prepsync/_native.pxd",
        ],
        extra_compile_args=compile_args,
        # dlopen/dlsym (in libc itself from glibc 2.34 on; libdl before).
        extra_link_args=[*link_args, "-ldl"],
        define_macros=macros,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
        gdb_debug=DEBUG,
    )
)
