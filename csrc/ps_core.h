/* Shared pieces of the native core: the error state every entry point fills, counted
 * allocations and spill files (so tests can assert that nothing leaks), and a buffered
 * writer over a file descriptor.
 *
 * Convention: functions return PS_OK (0) or an error code, and on error have filled the
 * ps_error passed to them. Nothing here touches Python. */
#ifndef PS_CORE_H
#define PS_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum ps_code {
    PS_OK = 0,
    PS_ERR_INPUT = 1,         /* bad source CSV: message is the problem, line/offset set */
    PS_ERR_BASELINE_CSV = 2,  /* bad baseline CSV: same fields as PS_ERR_INPUT */
    PS_ERR_BASELINE = 3,      /* baseline not sorted / duplicate key: line set */
    PS_ERR_IO = 4,            /* a read or write failed: message names the operation */
    PS_ERR_NOMEM = 5,
    PS_ERR_ARG = 6,           /* caller bug: inconsistent arguments */
    PS_ERR_DECODE = 7         /* bad bytes for the source's encoding: offset is the file's own
                                 (see ps_decode.h), line 0 (the caller finds it) */
};

typedef struct ps_error {
    int code;
    int64_t line;    /* 1-based physical line, 0 when not applicable */
    int64_t offset;  /* 0-based byte offset in the file, -1 when not applicable */
    char message[512];
} ps_error;

int ps_fail(ps_error *err, int code, int64_t line, int64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int ps_fail_errno(ps_error *err, const char *what, const char *path);

/* Live counters, always on (a few increments per buffer or file, never per row). */
typedef struct ps_counters {
    int64_t buffers;     /* blocks from ps_alloc not yet freed */
    int64_t spill_files; /* spill file descriptors open */
    int64_t threads;     /* worker threads started and not yet joined */
} ps_counters;
extern ps_counters ps_live;

/* Starts fn(arg) on a new thread with every signal blocked in it (signals stay with the
 * threads that handle them: Python's, for Ctrl-C) and counts it in ps_live.threads; 1 when it
 * runs (the caller joins it and decrements the count), 0 when no thread could be created and
 * the caller does the work itself. In a debug build PREPSYNC_DEBUG_NO_THREADS=1 makes every
 * start fail, so that the tests run those fallbacks too. */
int ps_start_thread(pthread_t *thread, void *(*fn)(void *), void *arg);

/* Large buffers come straight from mmap so that freeing them returns the memory to the
 * system at once: glibc's dynamic mmap threshold would otherwise keep a freed arena in the
 * heap and the process's RSS would not come back down between the sort and merge phases. */
void *ps_alloc(size_t size);
void *ps_realloc(void *block, size_t old_size, size_t new_size);
void ps_free(void *block, size_t size);

/* Wall and this thread's CPU time, in nanoseconds. Read per block or phase, never per row. */
typedef struct ps_time {
    int64_t wall_ns, cpu_ns;
} ps_time;

ps_time ps_time_now(void);
static inline void ps_time_add(ps_time *total, ps_time t) {
    total->wall_ns += t.wall_ns;
    total->cpu_ns += t.cpu_ns;
}

static inline void ps_time_sub(ps_time *total, ps_time t) {
    total->wall_ns -= t.wall_ns;
    total->cpu_ns -= t.cpu_ns;
}

/* *total += now - since */
static inline void ps_time_add_since(ps_time *total, ps_time since, ps_time now) {
    total->wall_ns += now.wall_ns - since.wall_ns;
    total->cpu_ns += now.cpu_ns - since.cpu_ns;
}

struct ps_flusher;

typedef struct ps_writer {
    int fd;
    const char *what; /* names the file in errors: "output", "spill file" */
    char *buf;
    size_t cap, len;
    int64_t bytes_written;
    /* Outputs are fsync'ed before they are renamed into place. Starting their writeback as
     * they grow overlaps that I/O with the work instead of paying it all at the end. */
    int eager_writeback;
    int64_t writeback_from; /* first byte not yet handed to writeback */
    ps_time flush_time;     /* spent in write() and writeback calls, on whichever thread */
    /* Set: full buffers are handed to this flusher's thread instead of written here. */
    struct ps_flusher *flusher;
} ps_writer;

#define PS_PUNCH_QUEUE 64

/* A writer thread shared by several writers (an engine's outputs of its final merge), so that
 * write() and writeback overlap the work that fills the buffers. At most one buffer is in
 * flight: a flush waits for the one before (and returns its error, which is sticky: after a
 * failure nothing more is written), hands over the full buffer and goes on in the spare, the
 * buffer of the job before. So the writers cost one buffer (io_block) more than when written
 * in place. While a job is in flight the thread owns its buffer and the writer's fd, what,
 * bytes_written, writeback_from and flush_time; the caller touches only buf, cap and len.
 * started: the thread runs and must be joined (ps_flusher_finish). If it cannot be started, the
 * writers write in place as without a flusher. */
typedef struct ps_flusher {
    size_t block;    /* size of the first spare */
    int started, start_failed, stopping;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ps_writer *job; /* the writer whose buffer is in flight, NULL when idle */
    char *job_buf;
    size_t job_len, job_cap;
    char *spare;
    size_t spare_cap;
    int rc;         /* the first failure, sticky */
    ps_error err;
    ps_time merger_time; /* the caller's time in flushes of its writers: hand-offs and waits */
    /* Holes the caller asked to punch (ps_flusher_punch), punched by the thread before its
     * next block; each stays queued until it is punched. */
    struct {
        int fd;
        int64_t offset, length;
    } punch[PS_PUNCH_QUEUE];
    int n_punch;
} ps_flusher;

void ps_flusher_init(ps_flusher *f, size_t block);
/* Hands the thread a hole to punch in fd (fallocate PUNCH_HOLE, best effort: a failure leaves
 * the bytes where they are); 1 when queued, 0 when the caller must punch it itself (no thread
 * running, or the queue full). fd must stay open until ps_flusher_drain_punches() or
 * ps_flusher_finish() has returned. */
int ps_flusher_punch(ps_flusher *f, int fd, int64_t offset, int64_t length);
/* Waits until every queued hole is punched. */
void ps_flusher_drain_punches(ps_flusher *f);
/* Waits for the buffer in flight, then joins the thread and frees the spare: the writers'
 * data is all written (or the first error is returned). Idempotent; safe on every path. */
int ps_flusher_finish(ps_flusher *f, ps_error *err);

int ps_writer_init(ps_writer *w, int fd, const char *what, size_t cap, ps_error *err);
void ps_writer_release(ps_writer *w); /* frees the buffer; does not close fd */
int ps_writer_flush(ps_writer *w, ps_error *err);
/* Make room for n contiguous bytes at w->buf + w->len (flushing, or growing for one huge row). */
int ps_writer_reserve(ps_writer *w, size_t n, ps_error *err);

static inline int ps_writer_put(ps_writer *w, const char *data, size_t n, ps_error *err) {
    if (w->cap - w->len < n) {
        int rc = ps_writer_reserve(w, n, err);
        if (rc) return rc;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    return PS_OK;
}

int ps_write_all(int fd, const char *what, const char *data, size_t n, ps_error *err);

#endif
