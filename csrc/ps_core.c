#define _GNU_SOURCE
#include "ps_core.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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
    w->flusher = NULL;
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

/* Writes one full buffer of w's file and starts its writeback: on the caller's thread, or on
 * a flusher's while the buffer is in flight. */
static int write_block(ps_writer *w, const char *buf, size_t len, ps_error *err) {
    ps_time started = ps_time_now();
    int rc = ps_write_all(w->fd, w->what, buf, len, err);
    if (rc) return rc;
    w->bytes_written += (int64_t)len;
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

int ps_start_thread(pthread_t *thread, void *(*fn)(void *), void *arg) {
#if PREPSYNC_DEBUG_BUILD
    const char *refuse = getenv("PREPSYNC_DEBUG_NO_THREADS");
    if (refuse && strcmp(refuse, "1") == 0) return 0;
#endif
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    int started = pthread_create(thread, NULL, fn, arg) == 0;
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (started) __atomic_add_fetch(&ps_live.threads, 1, __ATOMIC_RELAXED);
    return started;
}

void ps_flusher_init(ps_flusher *f, size_t block) {
    memset(f, 0, sizeof *f);
    f->block = block;
}

static void punch_holes(const ps_flusher *f, int n) {
#ifdef FALLOC_FL_PUNCH_HOLE
    for (int i = 0; i < n; i++)
        (void)fallocate(f->punch[i].fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        (off_t)f->punch[i].offset, (off_t)f->punch[i].length);
#else
    (void)f;
    (void)n;
#endif
}

static void *flusher_thread(void *arg) {
    ps_flusher *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->job && !f->n_punch && !f->stopping) pthread_cond_wait(&f->cv, &f->mu);
        if (f->n_punch) {
            /* Holes [0, n) stay where they are while they are punched outside the lock: the
             * caller only appends (under the lock) and only this thread removes. The caller
             * waits (drain, finish) before it closes a file with holes queued. */
            int n = f->n_punch;
            pthread_mutex_unlock(&f->mu);
            punch_holes(f, n);
            pthread_mutex_lock(&f->mu);
            memmove(f->punch, f->punch + n, (size_t)(f->n_punch - n) * sizeof f->punch[0]);
            f->n_punch -= n;
            pthread_cond_broadcast(&f->cv);
            continue;
        }
        if (!f->job) break; /* stopping, and the last buffer is written */
        ps_writer *w = f->job;
        const char *buf = f->job_buf;
        size_t len = f->job_len;
        int failed = f->rc;
        pthread_mutex_unlock(&f->mu);
        ps_error err;
        int rc = failed ? PS_OK : write_block(w, buf, len, &err);
        pthread_mutex_lock(&f->mu);
        if (rc) {
            f->rc = rc;
            f->err = err;
        }
        f->spare = f->job_buf;
        f->spare_cap = f->job_cap;
        f->job = NULL;
        f->job_buf = NULL;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

int ps_flusher_punch(ps_flusher *f, int fd, int64_t offset, int64_t length) {
    if (!f->started) return 0;
    pthread_mutex_lock(&f->mu);
    int queued = f->n_punch < PS_PUNCH_QUEUE;
    if (queued) {
        f->punch[f->n_punch].fd = fd;
        f->punch[f->n_punch].offset = offset;
        f->punch[f->n_punch].length = length;
        f->n_punch++;
        pthread_cond_signal(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return queued;
}

void ps_flusher_drain_punches(ps_flusher *f) {
    if (!f->started) return;
    pthread_mutex_lock(&f->mu);
    while (f->n_punch) pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

/* Waits until no buffer is in flight; returns the first failure. */
static int flusher_wait(ps_flusher *f, ps_error *err) {
    if (f->started) {
        pthread_mutex_lock(&f->mu);
        while (f->job) pthread_cond_wait(&f->cv, &f->mu);
        pthread_mutex_unlock(&f->mu);
    }
    if (f->rc) {
        *err = f->err;
        return f->rc;
    }
    return PS_OK;
}

static void flusher_start(ps_flusher *f) {
    f->spare = ps_alloc(f->block);
    if (!f->spare) {
        f->start_failed = 1;
        return;
    }
    f->spare_cap = f->block;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->started = ps_start_thread(&f->thread, flusher_thread, f);
    if (f->started) return;
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    ps_free(f->spare, f->spare_cap);
    f->spare = NULL;
    f->spare_cap = 0;
    f->start_failed = 1;
}

/* Hands w's full buffer to the flusher's thread and gives w the spare. */
static int flusher_hand_over(ps_flusher *f, ps_writer *w, ps_error *err) {
    if (!f->started && !f->start_failed) flusher_start(f);
    if (!f->started) return f->rc ? flusher_wait(f, err) : write_block(w, w->buf, w->len, err);
    int rc = flusher_wait(f, err);
    if (rc) return rc;
    pthread_mutex_lock(&f->mu);
    f->job = w;
    f->job_buf = w->buf;
    f->job_len = w->len;
    f->job_cap = w->cap;
    w->buf = f->spare;
    w->cap = f->spare_cap;
    f->spare = NULL;
    f->spare_cap = 0;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return PS_OK;
}

int ps_flusher_finish(ps_flusher *f, ps_error *err) {
    ps_time started = ps_time_now();
    int rc = flusher_wait(f, err);
    if (f->started) {
        pthread_mutex_lock(&f->mu);
        f->stopping = 1;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
        __atomic_sub_fetch(&ps_live.threads, 1, __ATOMIC_RELAXED);
        f->started = 0;
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->mu);
    }
    f->start_failed = 1; /* never restarted: what comes later is written in place */
    ps_free(f->spare, f->spare_cap);
    f->spare = NULL;
    f->spare_cap = 0;
    ps_time_add_since(&f->merger_time, started, ps_time_now());
    return rc;
}

int ps_writer_flush(ps_writer *w, ps_error *err) {
    if (w->len == 0) return PS_OK;
    if (!w->flusher) {
        int rc = write_block(w, w->buf, w->len, err);
        if (rc) return rc;
        w->len = 0;
        return PS_OK;
    }
    ps_time started = ps_time_now();
    int rc = flusher_hand_over(w->flusher, w, err);
    if (!rc) w->len = 0;
    ps_time_add_since(&w->flusher->merger_time, started, ps_time_now());
    return rc;
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
