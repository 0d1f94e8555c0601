#define _GNU_SOURCE
#include "ps_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

ps_counters ps_live = {0, 0, 0};

ps_time ps_time_now(void) {
    struct timespec wall, cpu;
    clock_gettime(CLOCK_MONOTONIC, &wall);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    ps_time t = {(int64_t)wall.tv_sec * 1000000000 + wall.tv_nsec,
                 (int64_t)cpu.tv_sec * 1000000000 + cpu.tv_nsec};
    return t;
}

int ps_fail(ps_error *err, int code, int64_t line, int64_t offset, const char *fmt, ...) {
    va_list ap;
    err->code = code;
    err->line = line;
    err->offset = offset;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

int ps_fail_errno(ps_error *err, const char *what, const char *path) {
    int saved = errno;
    if (saved == ENOMEM) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "%s: out of memory", what);
    return ps_fail(err, PS_ERR_IO, 0, -1, "%s %s: %s", what, path ? path : "", strerror(saved));
}

void *ps_alloc(size_t size) {
    if (size == 0) size = 1;
    void *block = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    __atomic_add_fetch(&ps_live.buffers, 1, __ATOMIC_RELAXED);
    return block;
}

void *ps_realloc(void *block, size_t old_size, size_t new_size) {
    if (!block) return ps_alloc(new_size);
    if (old_size == 0) old_size = 1;
    void *moved = mremap(block, old_size, new_size, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    return moved;
}

void ps_free(void *block, size_t size) {
    if (!block) return;
    munmap(block, size ? size : 1);
    __atomic_sub_fetch(&ps_live.buffers, 1, __ATOMIC_RELAXED);
}

int ps_write_all(int fd, const char *what, const char *data, size_t n, ps_error *err) {
    while (n > 0) {
        ssize_t done = write(fd, data, n);
        if (done < 0) {
            if (errno == EINTR) continue;
            return ps_fail_errno(err, "writing", what);
        }
        data += done;
        n -= (size_t)done;
    }
    return PS_OK;
}

#define WRITEBACK_STEP ((int64_t)32 << 20)

int ps_writer_init(ps_writer *w, int fd, const char *what, size_t cap, ps_error *err) {
    w->fd = fd;
    w->what = what;
    w->len = 0;
    w->bytes_written = 0;
    w->eager_writeback = 0;
    w->writeback_from = 0;
    w->flush_time = (ps_time){0, 0};
    w->cap = cap;
    w->buf = ps_alloc(cap);
    if (!w->buf) return ps_fail_errno(err, "allocating a buffer for", what);
    return PS_OK;
}

void ps_writer_release(ps_writer *w) {
    ps_free(w->buf, w->cap);
    w->buf = NULL;
    w->cap = w->len = 0;
}

int ps_writer_flush(ps_writer *w, ps_error *err) {
    if (w->len == 0) return PS_OK;
    ps_time started = ps_time_now();
    int rc = ps_write_all(w->fd, w->what, w->buf, w->len, err);
    if (rc) return rc;
    w->bytes_written += (int64_t)w->len;
    w->len = 0;
#ifdef SYNC_FILE_RANGE_WRITE
    if (w->eager_writeback && w->bytes_written - w->writeback_from >= WRITEBACK_STEP) {
        /* Starts writeback of the file's dirty pages without waiting; errors surface at the
         * final fsync, which then has little left to do. */
        sync_file_range(w->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        w->writeback_from = w->bytes_written;
    }
#endif
    ps_time_add_since(&w->flush_time, started, ps_time_now());
    return PS_OK;
}

int ps_writer_reserve(ps_writer *w, size_t n, ps_error *err) {
    if (w->cap - w->len >= n) return PS_OK;
    int rc = ps_writer_flush(w, err);
    if (rc) return rc;
    if (w->cap >= n) return PS_OK;
    /* One row larger than the buffer: grow to fit it rather than split the row. */
    char *grown = ps_realloc(w->buf, w->cap, n);
    if (!grown) return ps_fail_errno(err, "allocating", "output buffer");
    w->buf = grown;
    w->cap = n;
    return PS_OK;
}
