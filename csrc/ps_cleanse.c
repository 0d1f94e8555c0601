#define _GNU_SOURCE
#include "ps_cleanse.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_sort.h"
#include "ps_format.h"
#include "ps_tokenizer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MIN_READER_BUF ((size_t)32 << 10)
/* Bigger reads buy nothing from the page cache and cost: each read() copied tens of MiB
 * through the caches before the merge consumed them, and every page of those buffers was
 * faulted in (at 1 GiB the final merge took 1.5x its 256 MiB time). */
#define MAX_READER_BUF ((size_t)1 << 20)
/* Well under the usual 1024 open files; more runs than this are merged in passes. */
#define MAX_FAN_IN 500
#define REC_HEADER 8 /* u32 key length, u32 line length (0 for a link table: see key_is_line) */
/* In a run file only: this bit of the key length says the key is the line's first bytes and is
 * not stored again (see put_run_record). */
#define REC_KEY_IN_LINE 0x80000000u
#define PREFETCH_AHEAD 8
/* A run's bytes already copied into its reader's buffer are released from the page cache in
 * steps of this many bytes (see reader_release). */
#define RELEASE_STEP ((off_t)1 << 20)
/* The sort phase's arena, whatever the budget: a run's index (16 bytes per row, about 1.6 MB
 * for 32 MiB of AD rows) stays within a core's L2 cache and its records' pages are faulted in
 * once and reused, where a budget-sized arena made a bigger budget slower (one large sort, and
 * every page of it faulted in). More memory buys fewer merge passes. */
#define RUN_ARENA ((size_t)32 << 20)
/* Runs of a very large table double in size every this many runs (up to what the budget
 * allows), so that their number stays within one merge's fan-in. */
#define RUNS_PER_DOUBLING 64

/* ---------------------------------------------------------------- projection */

typedef struct projection {
    int32_t *out_cols;
    size_t n_out;
    int32_t *key_cols;
    size_t n_key;
    int command_first; /* out_cols[0] is a change file's command column */
} projection;

enum { CMD_INSERT, CMD_UPDATE, CMD_DELETE, CMD_MERGE, CMD_EMPTY = -2, CMD_INVALID = -1 };
/* How a command is written out (lower case); "add", Workday's spelling, is written "merge". */
static const char *const command_words[] = {"insert", "update", "delete", "merge"};
static const size_t command_lengths[] = {6, 6, 6, 5};
static const struct {
    const char *word;
    size_t len;
    int command;
} command_spellings[] = {
    {"insert", 6, CMD_INSERT}, {"update", 6, CMD_UPDATE}, {"delete", 6, CMD_DELETE},
    {"merge", 5, CMD_MERGE},   {"add", 3, CMD_MERGE},
};

/* The command a field spells, in any ASCII case; CMD_EMPTY or CMD_INVALID otherwise. */
static int parse_command(const ps_field *f) {
    if (f->len == 0) return CMD_EMPTY;
    if (f->escaped || f->len < 3 || f->len > 6) return CMD_INVALID;
    char lower[6];
    for (uint32_t i = 0; i < f->len; i++) {
        char ch = f->data[i];
        lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    for (size_t k = 0; k < sizeof command_spellings / sizeof command_spellings[0]; k++)
        if (command_spellings[k].len == f->len && memcmp(lower, command_spellings[k].word, f->len) == 0)
            return command_spellings[k].command;
    return CMD_INVALID;
}

/* Length of the "<command><sep>" a change row's line starts with (its word tells which). */
static inline size_t command_prefix_length(const char *line) {
    return (line[0] == 'm' ? 5 : 6) + 1;
}

static size_t line_bound(const projection *pj, const ps_field *f) {
    size_t n = pj->n_out;
    for (size_t i = 0; i < pj->n_out; i++) n += 2 * (size_t)f[pj->out_cols[i]].len + 2;
    return n;
}

static size_t key_bound(const projection *pj, const ps_field *f) {
    if (pj->n_key == 1) return f[pj->key_cols[0]].len;
    size_t n = 0;
    for (size_t i = 0; i < pj->n_key; i++) n += 2 * (size_t)f[pj->key_cols[i]].len + 2;
    return n;
}

/* The output line, without its LF. `command` is the parsed command when command_first.
 * A row of one empty field is written `""`: as an empty line it would read back as no row. */
static size_t build_line(const projection *pj, const ps_field *f, int command, char sep, char *out) {
    size_t n = 0;
    size_t i = 0;
    if (pj->command_first) {
        memcpy(out, command_words[command], command_lengths[command]);
        n = command_lengths[command];
        i = 1;
    }
    for (; i < pj->n_out; i++) {
        if (i) out[n++] = sep;
        n += ps_field_format(&f[pj->out_cols[i]], out + n);
    }
    if (n == 0) {
        out[n++] = '"';
        out[n++] = '"';
    }
    return n;
}

/* Whether p[0, n) holds a NUL byte. Inline, 16 bytes a step, reading nothing outside the
 * range (the last step overlaps the one before): a call to memchr for every column of every
 * two-column key (member DNs, ~75 bytes) cost 5% of cleansing a link table. */
static inline int holds_nul(const char *p, size_t n) {
#if defined(__SSE2__)
    if (n >= 16) {
        const __m128i zero = _mm_setzero_si128();
        __m128i found = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + n - 16)), zero);
        for (size_t i = 0; i + 16 < n; i += 16)
            found = _mm_or_si128(found, _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i)), zero));
        return _mm_movemask_epi8(found) != 0;
    }
#endif
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0) return 1;
    return 0;
}

/* A single key column is its value as it is. Several are each escaped (0x00 -> 0x00 0x01) and
 * closed by 0x00 0x00, so that memcmp over the whole key compares column by column with a
 * shorter value first: the terminator sorts below every byte a longer value could hold there. */
static size_t build_key(const projection *pj, const ps_field *f, char *out) {
    if (pj->n_key == 1) return ps_field_unescape(&f[pj->key_cols[0]], out);
    size_t n = 0;
    for (size_t i = 0; i < pj->n_key; i++) {
        const ps_field *kf = &f[pj->key_cols[i]];
        size_t len = ps_field_unescape(kf, out + n);
        /* Unescaped, the value is the input's bytes: look there, not at the copy just
         * written (loads right after the copy's stores stall on store forwarding). */
        if (holds_nul(kf->escaped ? out + n : kf->data, len)) {
            /* Rare: shift right from the end, doubling each NUL into 0x00 0x01. */
            size_t zeros = 0;
            for (size_t j = 0; j < len; j++) zeros += out[n + j] == 0;
            char *src = out + n + len, *dst = out + n + len + zeros;
            while (src > out + n) {
                char ch = *--src;
                if (ch == 0) {
                    *--dst = 1;
                    *--dst = 0;
                } else {
                    *--dst = ch;
                }
            }
            len += zeros;
        }
        n += len;
        out[n++] = 0;
        out[n++] = 0;
    }
    return n;
}

/* A link table's output line rebuilt from its key (see key_is_line): the bytes build_line
 * wrote for the row, since its values are the key's, in key order, none of them empty (an
 * empty key value makes a null-key row, which never gets a key). `value` is scratch for a
 * value holding NULs (klen bytes); out needs line_from_key_bound(). */
static size_t line_from_key(const projection *pj, char sep, const char *key, size_t klen, char *value,
                            char *out) {
    if (pj->n_key == 1) return ps_format_value(key, klen, sep, out);
    return ps_format_key(key, klen, sep, value, out);
}

static inline size_t line_from_key_bound(const projection *pj, size_t klen) {
    return 2 * klen + 3 * pj->n_key;
}

static inline int key_cmp(const char *a, size_t alen, const char *b, size_t blen) {
    size_t m = alen < blen ? alen : blen;
    int c = m ? memcmp(a, b, m) : 0;
    if (c) return c;
    return (alen > blen) - (alen < blen);
}

static inline uint32_t load_u32(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void store_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* ---------------------------------------------------------------- run files */

typedef struct run_reader {
    int fd;
    int run_id;
    size_t order; /* position in the run list: a lower position holds earlier input */
    char *buf;
    size_t cap, len, pos;
    int eof;
    off_t file_pos, released; /* bytes read from the run file; bytes of it punched out */
    /* Set in the final merge: holes are punched by the outputs' writer thread, off the merge
     * (the kernel's freeing of the pages was about a tenth of the final merge's time). */
    ps_flusher *punch_via;
    const char *key, *line; /* the current record, valid until the next read */
    uint32_t klen, llen;
    size_t stored; /* bytes of the current record in buf (front-coded: fewer than 8 + klen) */
    /* A link table's run is front-coded (see write_link_record): its keys are rebuilt here,
     * each from the one before, so key points into this buffer rather than into buf. */
    int front_coded;
    char *key_buf;
    size_t key_cap;
    /* The key's first 8 bytes, big-endian, zero-padded: when two readers' heads differ they
     * order their keys as memcmp would, so most heap comparisons need no call to memcmp. */
    uint64_t head;
    /* The last run, kept in the sorted arena instead of a file (fd -1): its index entries,
     * read from mem_next on, pointing into arena. */
    const char *arena;
    const ps_entry *mem_entries;
    size_t mem_n, mem_next;
} run_reader;

/* A full arena being sorted and written to its run file by a worker thread while the reader
 * fills the other arena, so that parsing overlaps sorting and spilling on two cores. The
 * worker owns arena and fd until it is joined, touches nothing else of the engine and reports
 * into its own error; `started`: a thread runs it and must be joined (0 when the job ran on
 * the reader's thread because no thread could be created). arena == NULL: no job. */
typedef struct spill_job {
    char *arena;
    size_t arena_size, n_entries, io_block;
    int front_coded; /* a link table's run: records written by write_link_record */
    int fd;
    int started;
    pthread_t thread;
    int rc;
    ps_error err;
    ps_time sort_time, spill_time;
    int64_t bytes_written;
} spill_job;

/* Ids of run files in the spill directory, in input order. */
typedef struct run_list {
    int *ids;
    size_t n, cap;
} run_list;

/* The engine's state: settings at the top level, fixed by ps_cleanse_new(); each phase's
 * mutable state in its own sub-struct, in the order the phases run. */
struct ps_cleanse {
    char sep;
    size_t budget, io_block;
    size_t record_room; /* the largest record the tokenizer accepts (ps_record_limit) */
    char *spill_dir;
    projection pj;
    int32_t command_col;
    int keep_last;
    int replay;         /* initial/complete change file: kept rows lose the command */
    /* A link table (members, managers...): the output columns are exactly the key columns, in
     * key order, with no command. Its records then carry the key only (line length 0): the line
     * would repeat the key's values, doubling the arena, the runs and the spill bytes. The line
     * is rebuilt from the key into `line` as each row leaves the final merge (`value`: a value
     * holding NULs, unescaped). */
    struct {
        int key_is_line;
        char *line, *value;
        size_t line_cap, value_cap;
    } link;

    /* Reading the input. header_seen: the header was checked against the column indexes; every
     * later record is a row. sealed: ps_cleanse_finish_input() ran; the tokenizer is released
     * (tok_live == 0) and no more bytes are accepted. */
    struct {
        ps_tokenizer tok;
        int tok_live;
        int header_seen;
        int sealed;
        ps_source src; /* until decided, and when transcoding, bytes go through it */
    } input;

    /* Building runs. Records grow up from arena[0] to arena_top, their n_entries index entries
     * grow down from arena[arena_size]. arena_size is run_arena_size() (which arena_max, half
     * of what the budget leaves for arenas, caps) from each run's start; only a row too large
     * for the arena grows it, until the next spill. A full arena is handed to `job` (a worker
     * thread sorts and writes it) and the reader goes on in `spare`, the arena of the job
     * before, once that job is done: at most one job is in flight, so runs are written and
     * listed in input order. from_memory: the input fit in one arena, which was sorted in
     * place and is streamed from entry mem_next on, with no run file at all. Otherwise, when
     * one merge can take every run, the last arena is sorted in place and merged from memory
     * as the last run (last_run_kept); else it is spilled too. Spare arenas are freed at seal,
     * the kept one with the engine. */
    struct {
        char *arena;
        size_t arena_size, arena_top, n_entries;
        size_t arena_max;
        char *spare;
        size_t spare_size;
        spill_job job;
        int from_memory;
        size_t mem_next;
        int last_run_kept;
    } sort;

    /* Run files on disk: `runs` is the input of the current (or next) merge pass, in input
     * order. Runs before merge.group_start have been merged and their files removed; the rest
     * exist, and ps_cleanse_free() removes what remains. Ids are never reused. */
    struct {
        run_list runs;
        int next_run_id;
    } spill;

    /* The merge in progress over spill.runs[group_start, group_start + n_readers), its heap
     * holding the heap_len readers not yet exhausted (readers_open: these are allocated and
     * their files open). An intermediate pass copies each group into run_out (its fd
     * run_out_fd, -1 when none is open) and lists the new run in `next`, which becomes
     * spill.runs when the pass ends. final_pass: the merge in progress feeds the outputs. */
    struct {
        run_reader *readers;
        run_reader **heap;
        size_t n_readers, heap_len, group_start;
        int readers_open;
        int final_pass;
        run_list next;
        ps_writer run_out;
        int run_out_fd;
        /* The last key written to run_out (a link table's run is front-coded against it);
         * out_have: one was written to the run being made. */
        char *out_key;
        size_t out_cap, out_klen;
        int out_have;
    } merge;

    /* Splitting kept rows from duplicates. `row` holds key then line (klen + llen bytes) of the
     * last kept key (keep first: the line is empty) or of the pending row (keep last, which is
     * settled once a different key or the end arrives); `have` says whether it is set. */
    struct {
        char *row;
        size_t cap, klen, llen;
        int have;
    } dedupe;

    /* Merge-joining kept rows against the baseline (active: a baseline was given, fixed at
     * creation). Baseline rows are read from fd, read_block bytes at a time, through tok.
     * A baseline row is read only when a kept row needs it, and first recognised by its bytes:
     * when it is exactly the kept row's line and an LF, it is that row unchanged and is skipped
     * unparsed (baseline_match). Otherwise it is parsed and formatted by pj as the outputs are,
     * into `cur` (key then line); have: cur holds a row not yet joined. `prev` holds the key of
     * the baseline row before it (a skipped row's key is the kept row's), so that each parsed
     * key can be checked to be strictly greater. ended: no baseline row is left. */
    struct {
        int active;
        int fd;
        size_t read_block;
        ps_tokenizer tok;
        int tok_live;
        projection pj;
        char *cur, *prev;
        size_t cur_cap, prev_cap;
        size_t klen, llen, prev_klen;
        int have, ended, prev_have, header_seen;
    } join;

    /* The output files. nullpk is written while reading and released at seal; the others
     * during the final merge (delta only when join.active), their full buffers written by
     * flusher's thread while the merge goes on. finished: all written, the end. */
    struct {
        ps_writer nullpk, sorted, duplicates, delta;
        ps_flusher flusher;
        int finished;
    } out;

    /* Counters reported by ps_cleanse_stats(). */
    ps_stats stats;
    /* Phase timing: `phase` running since `since`, -1 outside the engine's calls. `total` is
     * inclusive of output writes; ps_cleanse_stats() moves those to WRITE. */
    struct {
        int phase;
        ps_time since;
        ps_time total[PS_PHASES];
    } timer;
};

size_t ps_io_block(size_t budget) {
    size_t block = budget / 16;
    if (block < ((size_t)4 << 10)) block = (size_t)4 << 10;
    if (block > ((size_t)1 << 20)) block = (size_t)1 << 20;
    return block;
}

static void run_path(const ps_cleanse *c, int run_id, char *out, size_t cap) {
    snprintf(out, cap, "%s/run-%06d", c->spill_dir, run_id);
}

static int open_new_run(ps_cleanse *c, int *run_id, int *fd, ps_error *err) {
    char path[PATH_MAX];
    *run_id = c->spill.next_run_id++;
    run_path(c, *run_id, path, sizeof path);
    *fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (*fd < 0) return ps_fail_errno(err, "creating spill file", path);
    __atomic_add_fetch(&ps_live.spill_files, 1, __ATOMIC_RELAXED);
    return PS_OK;
}

static void close_spill_fd(int fd) {
    if (fd < 0) return;
    close(fd);
    __atomic_sub_fetch(&ps_live.spill_files, 1, __ATOMIC_RELAXED);
}

static void remove_run(const ps_cleanse *c, int run_id) {
    char path[PATH_MAX];
    run_path(c, run_id, path, sizeof path);
    unlink(path);
}

static int push_run(run_list *list, int run_id, ps_error *err) {
    if (list->n == list->cap) {
        size_t grown_cap = list->cap ? 2 * list->cap : 16;
        int *grown = realloc(list->ids, grown_cap * sizeof *grown);
        if (!grown) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for the run list");
        list->ids = grown;
        list->cap = grown_cap;
    }
    list->ids[list->n++] = run_id;
    return PS_OK;
}

/* ---------------------------------------------------------------- phase timing */

/* Charges the time since the last switch to the current phase and starts `next` (-1: leaving
 * the engine). Returns the phase that was running. Called per call, run or pass, never per row. */
static int phase_switch(ps_cleanse *c, int next) {
    ps_time now = ps_time_now();
    int previous = c->timer.phase;
    if (previous >= 0) ps_time_add_since(&c->timer.total[previous], c->timer.since, now);
    c->timer.phase = next;
    c->timer.since = now;
    return previous;
}

/* ---------------------------------------------------------------- sort phase */

static inline ps_entry *entries(const ps_cleanse *c) {
    return (ps_entry *)(c->sort.arena + c->sort.arena_size) - c->sort.n_entries;
}

static inline size_t arena_free(const ps_cleanse *c) {
    return c->sort.arena_size - c->sort.arena_top - c->sort.n_entries * sizeof(ps_entry);
}

/* The arena size for the next run (see RUN_ARENA). */
static size_t run_arena_size(const ps_cleanse *c) {
    unsigned doublings = (unsigned)(c->stats.runs / RUNS_PER_DOUBLING);
    size_t size = c->sort.arena_max;
    if (doublings < 16 && (RUN_ARENA << doublings) < size) size = RUN_ARENA << doublings;
    size = (size + 15) & ~(size_t)15;
    return size < 256 ? 256 : size; /* tests use tiny budgets to force many runs */
}

/* Between runs (the arena is empty): the size the next run gets, and back to it after a
 * row larger than the arena grew it. */
static int resize_arena(ps_cleanse *c, ps_error *err) {
    size_t size = run_arena_size(c);
    if (size == c->sort.arena_size) return PS_OK;
    char *resized = ps_realloc(c->sort.arena, c->sort.arena_size, size);
    if (!resized) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for the sort arena");
    c->sort.arena = resized;
    c->sort.arena_size = size;
    return PS_OK;
}

/* Length of the common prefix of a[0, n) and b[0, n). */
static size_t common_prefix(const char *a, const char *b, size_t n) {
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return i + (size_t)__builtin_ctzll(x ^ y) / 8;
        i += 8;
    }
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* A link table's record in a run file, front-coded: {u32 key length, u32 bytes shared with
 * the previous key of the run, the key's other bytes}. A link table's record is its key alone
 * (line length 0, see key_is_line), and in sorted order neighbouring keys share much: two DNs
 * whose group is the same, or whose groups begin alike (about 45 % of the bench's member key
 * bytes). The second field, always 0 as a line length there, says how much. prev: the run's
 * previous key (NULL for its first). */
static int write_link_record(ps_writer *w, const char *prev, size_t prev_len, const char *key,
                             size_t klen, ps_error *err) {
    size_t shared = prev ? common_prefix(prev, key, prev_len < klen ? prev_len : klen) : 0;
    int rc = ps_writer_reserve(w, REC_HEADER + klen - shared, err);
    if (rc) return rc;
    char *out = w->buf + w->len;
    store_u32(out, (uint32_t)klen);
    store_u32(out + 4, (uint32_t)shared);
    memcpy(out + REC_HEADER, key + shared, klen - shared);
    w->len += REC_HEADER + klen - shared;
    return PS_OK;
}

/* An entity table's record in a run file: {u32 key length, u32 line length, key, line}, or,
 * when the line begins with the key's bytes (a one-column key that is the first output column
 * and needs no quotes, such as objectGUID), {key length | REC_KEY_IN_LINE, line length, line}:
 * the key is not written twice. For the bench's entries that is 36 of about 400 bytes a row,
 * 9 % fewer bytes written to the spill and read back. */
static int put_run_record(ps_writer *w, const char *key, size_t klen, const char *line,
                          size_t llen, ps_error *err) {
    int in_line = klen <= llen && memcmp(key, line, klen) == 0;
    size_t n = REC_HEADER + (in_line ? 0 : klen) + llen;
    int rc = ps_writer_reserve(w, n, err);
    if (rc) return rc;
    char *out = w->buf + w->len;
    store_u32(out, (uint32_t)klen | (in_line ? REC_KEY_IN_LINE : 0));
    store_u32(out + 4, (uint32_t)llen);
    if (!in_line) memcpy(out + REC_HEADER, key, klen);
    memcpy(out + n - llen, line, llen);
    w->len += n;
    return PS_OK;
}

/* Sorts a job's arena and writes it to its run file: on the worker thread, or on the reader's
 * when no thread could be started. */
static void run_spill_job(spill_job *job) {
    ps_time start = ps_time_now();
    ps_entry *e = (ps_entry *)(job->arena + job->arena_size) - job->n_entries;
    ps_sort_entries(e, job->n_entries, job->arena);
    ps_time sorted = ps_time_now();
    ps_writer w;
    int rc = ps_writer_init(&w, job->fd, "spill file", job->io_block, &job->err);
    const char *prev = NULL;
    for (size_t i = 0; !rc && i < job->n_entries; i++) {
        /* Sorted order visits the arena at random: fetch a few records ahead. */
        if (i + PREFETCH_AHEAD < job->n_entries)
            __builtin_prefetch(job->arena + ps_entry_offset(&e[i + PREFETCH_AHEAD]));
        const char *r = job->arena + ps_entry_offset(&e[i]);
        if (job->front_coded) {
            rc = write_link_record(&w, prev ? prev + REC_HEADER : NULL, prev ? load_u32(prev) : 0,
                                   r + REC_HEADER, load_u32(r), &job->err);
            prev = r;
        } else {
            uint32_t klen = load_u32(r);
            rc = put_run_record(&w, r + REC_HEADER, klen, r + REC_HEADER + klen, load_u32(r + 4),
                                &job->err);
        }
    }
    if (!rc) rc = ps_writer_flush(&w, &job->err);
    job->bytes_written = w.bytes_written;
    ps_writer_release(&w);
    job->rc = rc;
    ps_time_add_since(&job->sort_time, start, sorted);
    ps_time_add_since(&job->spill_time, sorted, ps_time_now());
}

static void *spill_thread(void *job) {
    run_spill_job(job);
    return NULL;
}

/* Waits for the job in flight, if any: its run file is complete (or its error is returned),
 * its time is charged to sort and spill, and its arena becomes the spare. The wait itself is
 * no phase: the worker's own time is what the job cost. */
static int finish_spill_job(ps_cleanse *c, ps_error *err) {
    spill_job *job = &c->sort.job;
    if (!job->arena) return PS_OK;
    if (job->started) {
        int outer = phase_switch(c, -1);
        pthread_join(job->thread, NULL);
        __atomic_sub_fetch(&ps_live.threads, 1, __ATOMIC_RELAXED);
        job->started = 0;
        phase_switch(c, outer);
    }
    close_spill_fd(job->fd);
    job->fd = -1;
    ps_time_add(&c->timer.total[PS_PHASE_SORT], job->sort_time);
    ps_time_add(&c->timer.total[PS_PHASE_SPILL], job->spill_time);
    c->stats.spill_bytes += job->bytes_written;
    c->sort.spare = job->arena;
    c->sort.spare_size = job->arena_size;
    job->arena = NULL;
    if (job->rc) {
        *err = job->err;
        return job->rc;
    }
    return PS_OK;
}

/* Hands the full arena to a worker that sorts it into the next run file, and goes on in the
 * spare arena. The run is listed before the worker starts, so that ps_cleanse_free() removes
 * its file whatever happens. */
static int spill_arena(ps_cleanse *c, ps_error *err) {
    int rc = finish_spill_job(c, err);
    if (rc) return rc;
    int run_id, fd;
    if ((rc = open_new_run(c, &run_id, &fd, err))) return rc;
    if ((rc = push_run(&c->spill.runs, run_id, err))) {
        close_spill_fd(fd);
        remove_run(c, run_id);
        return rc;
    }
    c->stats.runs++;
    spill_job *job = &c->sort.job;
    memset(job, 0, sizeof *job);
    job->arena = c->sort.arena;
    job->arena_size = c->sort.arena_size;
    job->n_entries = c->sort.n_entries;
    job->io_block = c->io_block;
    job->front_coded = c->link.key_is_line;
    job->fd = fd;
    c->sort.arena = c->sort.spare;
    c->sort.arena_size = c->sort.spare_size;
    c->sort.spare = NULL;
    c->sort.spare_size = 0;
    c->sort.arena_top = 0;
    c->sort.n_entries = 0;
    job->started = ps_start_thread(&job->thread, spill_thread, job);
    if (!job->started) run_spill_job(job);
    return resize_arena(c, err); /* the spare's size for this run, or a first spare */
}

static int grow_arena(ps_cleanse *c, size_t need, ps_error *err) {
    /* Only for a row larger than the whole arena: the arena is empty here. */
    size_t size = (need + 4095) & ~(size_t)4095;
    char *grown = ps_realloc(c->sort.arena, c->sort.arena_size, size);
    if (!grown) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a %zu-byte row", need);
    c->sort.arena = grown;
    c->sort.arena_size = size;
    return PS_OK;
}

static int process_record(ps_cleanse *c, const ps_record *rec, ps_error *err) {
    const ps_field *f = rec->fields;
    if (!c->input.header_seen) {
        c->input.header_seen = 1;
        for (size_t i = 0; i < c->pj.n_out; i++)
            if ((size_t)c->pj.out_cols[i] >= rec->nfields)
                return ps_fail(err, PS_ERR_ARG, 1, 0, "kept column index out of range");
        for (size_t i = 0; i < c->pj.n_key; i++)
            if ((size_t)c->pj.key_cols[i] >= rec->nfields)
                return ps_fail(err, PS_ERR_ARG, 1, 0, "key column index out of range");
        return PS_OK;
    }
    c->stats.rows_read++;
    int command = 0;
    if (c->command_col >= 0) {
        command = parse_command(&f[c->command_col]);
        if (command == CMD_EMPTY && c->replay) {
            command = CMD_INSERT; /* replayed from empty, a bare row is an insert */
        } else if (command == CMD_EMPTY) {
            return ps_fail(err, PS_ERR_INPUT, rec->line, rec->offset,
                           "empty command (expected insert, update, delete, merge or add)");
        } else if (command < 0) {
            const ps_field *cf = &f[c->command_col];
            char shown[101];
            size_t n = cf->len > 100 ? 100 : cf->len;
            ps_field tmp = *cf;
            tmp.len = (uint32_t)n;
            n = ps_field_unescape(&tmp, shown);
            for (size_t i = 0; i < n; i++)
                if (shown[i] == '\n' || shown[i] == '\r') shown[i] = ' ';
            return ps_fail(err, PS_ERR_INPUT, rec->line, rec->offset,
                           "invalid command '%.*s%s' (expected insert, update, delete, merge or add)",
                           (int)n, shown, cf->len > 100 ? "..." : "");
        }
    }
    int null_key = 0;
    for (size_t i = 0; i < c->pj.n_key; i++) null_key |= f[c->pj.key_cols[i]].len == 0;

    size_t lbound = line_bound(&c->pj, f);
    if (null_key) {
        int rc = ps_writer_reserve(&c->out.nullpk, lbound + 1, err);
        if (rc) return rc;
        char *out = c->out.nullpk.buf + c->out.nullpk.len;
        size_t n = build_line(&c->pj, f, command, c->sep, out);
        out[n++] = '\n';
        c->out.nullpk.len += n;
        c->stats.null_keys++;
        return PS_OK;
    }
    if (c->link.key_is_line) lbound = 0; /* rebuilt from the key at the final merge */
    size_t need = REC_HEADER + key_bound(&c->pj, f) + lbound + sizeof(ps_entry);
    if (arena_free(c) < need) {
        int rc = c->sort.n_entries ? spill_arena(c, err) : PS_OK;
        if (!rc && arena_free(c) < need) rc = grow_arena(c, need, err);
        if (rc) return rc;
    }
    char *r = c->sort.arena + c->sort.arena_top;
    size_t klen = build_key(&c->pj, f, r + REC_HEADER);
    size_t llen = c->link.key_is_line ? 0 : build_line(&c->pj, f, command, c->sep, r + REC_HEADER + klen);
    store_u32(r, (uint32_t)klen);
    store_u32(r + 4, (uint32_t)llen);
    ps_entry *e = (ps_entry *)(c->sort.arena + c->sort.arena_size) - c->sort.n_entries - 1;
    ps_entry_init(e, r + REC_HEADER, klen, c->sort.arena_top);
    c->sort.arena_top += REC_HEADER + klen + llen;
    c->sort.n_entries++;
    return PS_OK;
}

static int drain_tokenizer(ps_cleanse *c, ps_error *err) {
    ps_record rec;
    for (;;) {
        int st = ps_tok_next(&c->input.tok, &rec, err);
        if (st == PS_TOK_NEED_MORE || st == PS_TOK_END) return PS_OK;
        if (st != PS_TOK_RECORD) return st;
        int rc = process_record(c, &rec, err);
        if (rc) return rc;
    }
}

/* The file's first bytes (which decide its encoding), and every block of a file that is not
 * UTF-8: read into the source's own buffer and pushed through it, decoded. Half a block at a
 * time once transcoding, so that the text it makes (up to 1.5 times the bytes of UTF-16, 3 times
 * those of a code page, once all of it non-ASCII) stays near a block. */
static int read_through_source(ps_cleanse *c, int fd, size_t max_bytes, size_t *got, ps_error *err) {
    ps_source *src = &c->input.src;
    size_t want = src->decided ? max_bytes / 2 : max_bytes;
    if (want > ((size_t)64 << 10) && !src->decided) want = (size_t)64 << 10;
    if (want < 1) want = 1;
    if (src->raw_cap < want) {
        size_t cap = want < 4096 ? 4096 : want;
        char *raw = ps_realloc(src->raw, src->raw_cap, cap);
        if (!raw) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for the read buffer");
        src->raw = raw;
        src->raw_cap = cap;
    }
    ssize_t n;
    do {
        n = read(fd, src->raw, want);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return ps_fail_errno(err, "reading", "the source");
    *got = (size_t)n;
    if (n == 0) return PS_OK;
    int rc = ps_source_push(src, &c->input.tok, src->raw, (size_t)n, err);
    if (!rc) rc = drain_tokenizer(c, err);
    if (!rc && src->failed) rc = ps_source_error(src, err); /* after what came before it */
    return rc;
}

static int read_block(ps_cleanse *c, int fd, size_t max_bytes, size_t *got, ps_error *err) {
    if (!c->input.src.decided || c->input.src.kind != PS_ENC_UTF8)
        return read_through_source(c, fd, max_bytes, got, err);
    /* UTF-8: straight into the tokenizer's buffer. */
    char *room = ps_tok_reserve(&c->input.tok, max_bytes, err);
    if (!room) return err->code;
    ssize_t n;
    do {
        n = read(fd, room, max_bytes);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return ps_fail_errno(err, "reading", "the source");
    ps_tok_commit(&c->input.tok, (size_t)n);
    *got = (size_t)n;
    return n ? drain_tokenizer(c, err) : PS_OK;
}

int ps_cleanse_read(ps_cleanse *c, int fd, size_t max_bytes, size_t *got, ps_error *err) {
    if (c->input.sealed) return ps_fail(err, PS_ERR_ARG, 0, -1, "read after the end of input");
    phase_switch(c, PS_PHASE_READ);
    int rc = read_block(c, fd, max_bytes, got, err);
    phase_switch(c, -1);
    return rc;
}

/* ---------------------------------------------------------------- merge */

/* Punches the part of the run file that is already in the reader's buffer out of the file.
 * A spill file is read once, front to back, and deleted after the merge: its dirty pages would
 * otherwise stay in the page cache until then, while the merge's outputs (or the next pass's
 * run) take as many fresh pages. Freed as the merge goes, they are reused at once. On a
 * virtual machine whose host reclaims the guest's free memory, a fresh page costs a fault in
 * the host and a zeroing: writing 1 GB that way took 2.1 s of system time against 0.2 s into
 * pages just freed. A file system without hole punching keeps the pages until the file goes. */
static void reader_release(run_reader *r) {
#ifdef FALLOC_FL_PUNCH_HOLE
    off_t upto = r->file_pos & ~(RELEASE_STEP - 1);
    if (r->released < 0 || upto - r->released < RELEASE_STEP) return;
    if (r->punch_via && ps_flusher_punch(r->punch_via, r->fd, r->released, upto - r->released)) {
        r->released = upto;
        return;
    }
    if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->released,
                  upto - r->released) == 0)
        r->released = upto;
    else
        r->released = -1; /* unsupported here (or interrupted): the pages go with the file */
#else
    (void)r;
#endif
}

static int reader_fill(run_reader *r, size_t need, ps_error *err) {
    if (r->len - r->pos >= need) return PS_OK;
    memmove(r->buf, r->buf + r->pos, r->len - r->pos);
    r->len -= r->pos;
    r->pos = 0;
    if (need > r->cap) {
        char *grown = ps_realloc(r->buf, r->cap, need);
        if (!grown) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a run buffer");
        r->buf = grown;
        r->cap = need;
    }
    while (r->len < need && !r->eof) {
        ssize_t got = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (got < 0) {
            if (errno == EINTR) continue;
            return ps_fail_errno(err, "reading spill file", "");
        }
        if (got == 0) r->eof = 1;
        r->len += (size_t)got;
        r->file_pos += got;
    }
    reader_release(r);
    return PS_OK;
}

static inline uint64_t key_head(const char *key, uint32_t klen) {
    if (klen >= 8) return ps_load_be64(key);
    char bytes[8] = {0};
    memcpy(bytes, key, klen);
    return ps_load_be64(bytes);
}

/* 1: a record is current; 0: the run is exhausted. */
static int reader_next(run_reader *r, ps_error *err) {
    if (r->mem_entries) {
        if (r->mem_next == r->mem_n) return 0;
        /* Sorted order visits the arena at random: fetch a few records ahead. */
        if (r->mem_next + PREFETCH_AHEAD < r->mem_n)
            __builtin_prefetch(r->arena + ps_entry_offset(&r->mem_entries[r->mem_next + PREFETCH_AHEAD]));
        const char *rec = r->arena + ps_entry_offset(&r->mem_entries[r->mem_next++]);
        r->klen = load_u32(rec);
        r->llen = load_u32(rec + 4);
        r->key = rec + REC_HEADER;
        r->line = r->key + r->klen;
        r->head = key_head(r->key, r->klen);
        return 1;
    }
    r->pos += r->key ? r->stored : 0;
    int had_key = r->key != NULL;
    r->key = NULL;
    int rc = reader_fill(r, REC_HEADER, err);
    if (rc) return -rc;
    if (r->len - r->pos == 0) return 0;
    if (r->len - r->pos < REC_HEADER)
        return -ps_fail(err, PS_ERR_IO, 0, -1, "spill file is truncated");
    uint32_t klen = load_u32(r->buf + r->pos);
    uint32_t second = load_u32(r->buf + r->pos + 4);
    int key_in_line = 0;
    if (r->front_coded) {
        /* second: bytes shared with the previous key, still at the start of key_buf. */
        if (second > klen || (second && (!had_key || second > r->klen)))
            return -ps_fail(err, PS_ERR_IO, 0, -1, "spill file is corrupt");
        r->stored = REC_HEADER + (size_t)klen - second;
        if (klen > r->key_cap) {
            size_t cap = (size_t)klen + klen / 4 + 64;
            char *grown = realloc(r->key_buf, cap);
            if (!grown) return -ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a run's key");
            r->key_buf = grown;
            r->key_cap = cap;
        }
    } else {
        key_in_line = (klen & REC_KEY_IN_LINE) != 0;
        klen &= ~REC_KEY_IN_LINE;
        if (key_in_line && klen > second)
            return -ps_fail(err, PS_ERR_IO, 0, -1, "spill file is corrupt");
        r->stored = REC_HEADER + (key_in_line ? 0 : (size_t)klen) + second;
    }
    rc = reader_fill(r, r->stored, err);
    if (rc) return -rc;
    if (r->len - r->pos < r->stored)
        return -ps_fail(err, PS_ERR_IO, 0, -1, "spill file is truncated");
    r->klen = klen;
    if (r->front_coded) {
        memcpy(r->key_buf + second, r->buf + r->pos + REC_HEADER, klen - second);
        r->llen = 0;
        r->key = r->key_buf;
    } else {
        r->llen = second;
        r->key = r->buf + r->pos + REC_HEADER;
    }
    r->line = key_in_line ? r->key : r->key + r->klen;
    r->head = key_head(r->key, r->klen);
    return 1;
}

static inline int reader_less(const run_reader *a, const run_reader *b) {
    if (a->head != b->head) return a->head < b->head;
    int c = key_cmp(a->key, a->klen, b->key, b->klen);
    return c < 0 || (c == 0 && a->order < b->order);
}

static void heap_sift_down(run_reader **h, size_t n, size_t i) {
    run_reader *x = h[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && reader_less(h[child + 1], h[child])) child++;
        if (!reader_less(h[child], x)) break;
        h[i] = h[child];
        i = child;
    }
    h[i] = x;
}

static void close_readers(ps_cleanse *c, int remove_files) {
    for (size_t i = 0; i < c->merge.n_readers; i++) {
        run_reader *r = &c->merge.readers[i];
        if (r->mem_entries) continue; /* the kept run: the arena goes with the engine */
        close_spill_fd(r->fd);
        ps_free(r->buf, r->cap);
        free(r->key_buf);
        if (remove_files) remove_run(c, r->run_id);
    }
    free(c->merge.readers);
    free(c->merge.heap);
    c->merge.readers = NULL;
    c->merge.heap = NULL;
    c->merge.n_readers = c->merge.heap_len = 0;
    c->merge.readers_open = 0;
}

/* io_block-sized buffers the final merge holds beside its readers: one per output writer
 * (sorted, duplicates, and the delta when joining), the spare of the outputs' writer thread
 * (one buffer in flight), the baseline's tokenizer (two) and its read when joining, and one
 * for slack. The null-key writer and the input's tokenizer are released at seal. Counting
 * the baseline's share only when there is a baseline lets a small budget's merge read more
 * runs at once (32 MiB: the entries table's 154 runs in one final merge, without a pass). */
static inline size_t output_blocks(const ps_cleanse *c) { return c->join.active ? 7 : 4; }

static size_t merge_memory(const ps_cleanse *c) {
    /* What the readers may use: the budget less the writers and the baseline's tokenizer, and
     * room for the largest record to pass through one reader and the held row beyond their
     * shares (twice more for the baseline's tokenizer and rows when joining). */
    size_t reserved = output_blocks(c) * c->io_block + (c->join.active ? 4 : 2) * c->record_room;
    if (c->sort.last_run_kept) reserved += c->sort.arena_size;
    return c->budget > reserved + MIN_READER_BUF * 2 ? c->budget - reserved : MIN_READER_BUF * 2;
}

/* Whether the final merge can read every spilled run and the last arena, kept in memory,
 * with the readers' full shares left beside the arena (so never below the budget's floor). */
static int can_keep_last_run(const ps_cleanse *c) {
    size_t readers = c->spill.runs.n + 1;
    size_t reserved = output_blocks(c) * c->io_block + (c->join.active ? 4 : 2) * c->record_room +
                      c->sort.arena_size;
    return readers <= MAX_FAN_IN && c->budget >= reserved + readers * MIN_READER_BUF;
}

static size_t fan_in(const ps_cleanse *c) {
    size_t f = merge_memory(c) / MIN_READER_BUF;
    if (f > MAX_FAN_IN) f = MAX_FAN_IN;
    return f < 2 ? 2 : f;
}

/* Opens readers over runs[group_start, group_start + count). The run list is in input order
 * in every pass, so list position (not run id: a lone run carried into the next pass keeps its
 * old, smaller id) breaks ties between equal keys. */
static int open_group(ps_cleanse *c, size_t count, ps_error *err) {
    /* The final merge also reads the kept run, the last of the input, from memory. */
    int kept = c->merge.final_pass && c->sort.last_run_kept;
    c->merge.readers = calloc(count + kept, sizeof *c->merge.readers);
    c->merge.heap = calloc(count + kept, sizeof *c->merge.heap);
    if (!c->merge.readers || !c->merge.heap)
        return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for readers");
    c->merge.readers_open = 1;
    size_t each = merge_memory(c) / count;
    if (each > MAX_READER_BUF) each = MAX_READER_BUF;
    if (each < 4096) each = 4096;
    for (size_t i = 0; i < count; i++) {
        run_reader *r = &c->merge.readers[i];
        r->fd = -1;
        r->run_id = c->spill.runs.ids[c->merge.group_start + i];
        r->order = i;
        c->merge.n_readers = i + 1;
        char path[PATH_MAX];
        run_path(c, r->run_id, path, sizeof path);
        /* Writable, for reader_release's hole punching; the file is the engine's own. */
        r->fd = open(path, O_RDWR | O_CLOEXEC);
        if (r->fd < 0) return ps_fail_errno(err, "opening spill file", path);
        __atomic_add_fetch(&ps_live.spill_files, 1, __ATOMIC_RELAXED);
        posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        r->front_coded = c->link.key_is_line;
        r->punch_via = c->merge.final_pass ? &c->out.flusher : NULL;
        r->cap = each;
        r->buf = ps_alloc(each);
        if (!r->buf) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a run buffer");
        int st = reader_next(r, err);
        if (st < 0) return -st;
        if (st > 0) c->merge.heap[c->merge.heap_len++] = r;
    }
    if (kept) {
        run_reader *r = &c->merge.readers[count];
        r->fd = -1;
        r->run_id = -1;
        r->order = count;
        r->arena = c->sort.arena;
        r->mem_entries = entries(c);
        r->mem_n = c->sort.n_entries;
        c->merge.n_readers = count + 1;
        if (reader_next(r, err) > 0) c->merge.heap[c->merge.heap_len++] = r;
    }
    for (size_t i = c->merge.heap_len / 2; i-- > 0;) heap_sift_down(c->merge.heap, c->merge.heap_len, i);
    return PS_OK;
}

/* Start the next merge: an intermediate group while there are more runs than one merge can
 * read at once, else the final merge into the outputs. */
static int start_next_merge(ps_cleanse *c, ps_error *err) {
    size_t f = fan_in(c);
    if (c->merge.group_start == 0 && c->spill.runs.n <= f) {
        c->merge.final_pass = 1;
        phase_switch(c, PS_PHASE_JOIN);
        return open_group(c, c->spill.runs.n, err);
    }
    phase_switch(c, PS_PHASE_MERGE);
    if (c->merge.group_start == 0) c->stats.merge_passes++;
    /* Merge only as many runs as it takes for the final merge to read the rest: the runs this
     * pass has made, plus those left if they moved on as they are, must come within one
     * merge's fan-in. Merging g consecutive runs into one leaves g - 1 fewer, so the pass
     * merges groups of f until that count is close, then one group of what is left to cut,
     * and the remaining runs move on unmerged: only part of the data takes the extra pass,
     * where whole groups of f merged every run. */
    size_t remaining = c->spill.runs.n - c->merge.group_start;
    size_t after = c->merge.next.n + remaining;
    size_t count = after <= f ? 1 : after - f + 1;
    if (count > f) count = f;
    if (count > remaining) count = remaining;
    if (count == 1) {
        /* A lone run (or one that need not be merged in this pass) moves on as it is. */
        int rc = push_run(&c->merge.next, c->spill.runs.ids[c->merge.group_start], err);
        if (rc) return rc;
        c->merge.group_start++;
        return PS_OK;
    }
    int run_id, rc = open_new_run(c, &run_id, &c->merge.run_out_fd, err);
    if (rc) return rc;
    rc = ps_writer_init(&c->merge.run_out, c->merge.run_out_fd, "spill file", c->io_block, err);
    if (rc) return rc;
    c->merge.out_have = 0; /* a new run: its first key is written whole */
    /* Record the id now so that cleanup removes the file if anything fails from here on. */
    rc = push_run(&c->merge.next, run_id, err);
    if (rc) return rc;
    return open_group(c, count, err);
}

static int finish_intermediate(ps_cleanse *c, ps_error *err) {
    int rc = ps_writer_flush(&c->merge.run_out, err);
    c->stats.spill_bytes += c->merge.run_out.bytes_written;
    ps_writer_release(&c->merge.run_out);
    close_spill_fd(c->merge.run_out_fd);
    c->merge.run_out_fd = -1;
    size_t count = c->merge.n_readers;
    close_readers(c, 1);
    if (rc) return rc;
    c->merge.group_start += count;
    return PS_OK;
}

static void end_pass_if_done(ps_cleanse *c) {
    if (c->merge.final_pass || c->merge.readers_open || c->merge.group_start < c->spill.runs.n) return;
    free(c->spill.runs.ids);
    c->spill.runs = c->merge.next;
    c->merge.next = (run_list){NULL, 0, 0};
    c->merge.group_start = 0;
}

/* ---------------------------------------------------------------- outputs */

static int hold(ps_cleanse *c, const char *key, size_t klen, const char *line, size_t llen,
                ps_error *err) {
    size_t need = klen + llen + 1;
    if (need > c->dedupe.cap) {
        size_t cap = need + need / 4; /* amortized growth, without doubling a huge row */
        char *grown = realloc(c->dedupe.row, cap);
        if (!grown) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a row");
        c->dedupe.row = grown;
        c->dedupe.cap = cap;
    }
    memcpy(c->dedupe.row, key, klen);
    memcpy(c->dedupe.row + klen, line, llen);
    c->dedupe.klen = klen;
    c->dedupe.llen = llen;
    c->dedupe.have = 1;
    return PS_OK;
}

static int put_line(ps_writer *w, const char *prefix, size_t plen, char sep, const char *line,
                    size_t llen, ps_error *err) {
    int rc = ps_writer_reserve(w, plen + 1 + llen + 1, err);
    if (rc) return rc;
    char *out = w->buf + w->len;
    if (plen) {
        memcpy(out, prefix, plen);
        out[plen] = sep;
        out += plen + 1;
        w->len += plen + 1;
    }
    memcpy(out, line, llen);
    out[llen] = '\n';
    w->len += llen + 1;
    return PS_OK;
}

static int grow_buffer(char **buf, size_t *cap, size_t need, ps_error *err) {
    if (need <= *cap) return PS_OK;
    size_t new_cap = need + need / 4; /* need is already a bound: no doubling on top */
    char *grown = realloc(*buf, new_cap);
    if (!grown) return ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory for a %zu-byte row", need);
    *buf = grown;
    *cap = new_cap;
    return PS_OK;
}

/* Reads the next block of the baseline into its tokenizer (sets its end at EOF). */
static int baseline_fill(ps_cleanse *c, ps_error *err) {
    for (;;) {
        char *room = ps_tok_reserve(&c->join.tok, c->join.read_block, err);
        if (!room) return err->code;
        ssize_t got = read(c->join.fd, room, c->join.read_block);
        if (got < 0) {
            if (errno == EINTR) continue;
            return ps_fail_errno(err, "reading", "baseline");
        }
        if (got == 0) ps_tok_set_eof(&c->join.tok);
        ps_tok_commit(&c->join.tok, (size_t)got);
        return PS_OK;
    }
}

/* The next baseline record: PS_TOK_RECORD or PS_TOK_END, else an error code. */
static int baseline_record(ps_cleanse *c, ps_record *rec, ps_error *err) {
    for (;;) {
        int st = ps_tok_next(&c->join.tok, rec, err);
        if (st != PS_TOK_NEED_MORE) return st;
        int rc = baseline_fill(c, err);
        if (rc) return rc;
    }
}

/* Skips the header (checked against the kept columns before the engine starts). */
static int baseline_start(ps_cleanse *c, ps_error *err) {
    ps_record rec;
    int st = baseline_record(c, &rec, err);
    if (st == PS_TOK_END) c->join.ended = 1;
    else if (st != PS_TOK_RECORD) return st;
    c->join.header_seen = 1;
    return PS_OK;
}

/* The current row is joined: its key becomes the previous one. */
static void baseline_release(ps_cleanse *c) {
    char *swap = c->join.prev;
    size_t swap_cap = c->join.prev_cap;
    c->join.prev = c->join.cur;
    c->join.prev_cap = c->join.cur_cap;
    c->join.prev_klen = c->join.klen;
    c->join.prev_have = 1;
    c->join.cur = swap;
    c->join.cur_cap = swap_cap;
    c->join.have = 0;
}

/* Parses the next baseline row into cur (or sets ended), checking that keys strictly increase. */
static int baseline_parse(ps_cleanse *c, ps_error *err) {
    ps_record rec;
    int st = baseline_record(c, &rec, err);
    if (st == PS_TOK_END) {
        c->join.ended = 1;
        return PS_OK;
    }
    if (st != PS_TOK_RECORD) return st;
    size_t need = key_bound(&c->join.pj, rec.fields) + line_bound(&c->join.pj, rec.fields);
    int rc = grow_buffer(&c->join.cur, &c->join.cur_cap, need, err);
    if (rc) return rc;
    c->join.klen = build_key(&c->join.pj, rec.fields, c->join.cur);
    c->join.llen = build_line(&c->join.pj, rec.fields, 0, c->sep, c->join.cur + c->join.klen);
    c->join.have = 1;
    if (c->join.prev_have) {
        int order = key_cmp(c->join.prev, c->join.prev_klen, c->join.cur, c->join.klen);
        if (order == 0)
            return ps_fail(err, PS_ERR_BASELINE, rec.line, rec.offset,
                           "baseline has a duplicate key at line %lld", (long long)rec.line);
        if (order > 0)
            return ps_fail(err, PS_ERR_BASELINE, rec.line, rec.offset,
                           "baseline is not sorted by key at line %lld", (long long)rec.line);
    }
    return PS_OK;
}

static int remember_key(ps_cleanse *c, const char *key, size_t klen, ps_error *err) {
    int rc = grow_buffer(&c->join.prev, &c->join.prev_cap, klen ? klen : 1, err);
    if (rc) return rc;
    memcpy(c->join.prev, key, klen);
    c->join.prev_klen = klen;
    c->join.prev_have = 1;
    return PS_OK;
}

/* The fast path of an unchanged row: when the next baseline record's bytes are exactly the
 * kept row's line and an LF, it is that row (*matched = 1) and is skipped unparsed.
 * Why that is exact: the line is one complete canonical record (its LFs are inside quotes,
 * and it never starts with a line end, so no blank line is hiding), and parsing is
 * deterministic, so the baseline record parses to the kept row's values; the header was
 * checked to be the kept columns, so it has their count and the same key. Its key is above
 * the previous baseline key (which is at most the previous kept key), so only the next parsed
 * row needs checking, against this key. Anything else - CRLF line ends, other quoting, a last
 * row without its LF, a row the tokenizer would refuse as too large - just misses and is
 * parsed as before. */
static int baseline_match(ps_cleanse *c, const char *key, size_t klen, const char *line, size_t llen,
                          int *matched, ps_error *err) {
    *matched = 0;
    size_t need = llen + 1;
    if (need > c->join.tok.max_record) return PS_OK;
    size_t avail;
    const char *raw = ps_tok_unread(&c->join.tok, &avail);
    while (avail < need && !c->join.tok.eof) {
        if (memcmp(raw, line, avail) != 0) return PS_OK; /* differs already: no need to read */
        int rc = baseline_fill(c, err);
        if (rc) return rc;
        raw = ps_tok_unread(&c->join.tok, &avail);
    }
    if (avail < need || raw[llen] != '\n' || memcmp(raw, line, llen) != 0) return PS_OK;
    int64_t lines = 1;
    for (const char *p = line, *end = line + llen; (p = memchr(p, '\n', (size_t)(end - p))); p++)
        lines++;
    ps_tok_skip(&c->join.tok, need, lines);
    *matched = 1;
    return remember_key(c, key, klen, err);
}

static int emit_delete(ps_cleanse *c, ps_error *err) {
    c->stats.deletes++;
    int rc = put_line(&c->out.delta, "delete", 6, c->sep, c->join.cur + c->join.klen, c->join.llen, err);
    baseline_release(c);
    return rc;
}

/* One kept row of the new extract against the baseline; both streams ascend strictly. */
static int join_row(ps_cleanse *c, const char *key, size_t klen, const char *line, size_t llen,
                    ps_error *err) {
    int rc;
    for (;;) {
        if (!c->join.have) {
            if (c->join.ended) break;
            int matched;
            if ((rc = baseline_match(c, key, klen, line, llen, &matched, err))) return rc;
            if (matched) return PS_OK;
            if ((rc = baseline_parse(c, err))) return rc;
            continue;
        }
        int order = key_cmp(c->join.cur, c->join.klen, key, klen);
        if (order > 0) break;
        if (order == 0) {
            /* Lines are the canonical formatting of the values, so equal lines <=> equal values. */
            int same = c->join.llen == llen && memcmp(c->join.cur + c->join.klen, line, llen) == 0;
            baseline_release(c);
            if (same) return PS_OK;
            c->stats.updates++;
            return put_line(&c->out.delta, "update", 6, c->sep, line, llen, err);
        }
        if ((rc = emit_delete(c, err))) return rc;
    }
    c->stats.inserts++;
    return put_line(&c->out.delta, "insert", 6, c->sep, line, llen, err);
}

static int emit_kept(ps_cleanse *c, const char *key, size_t klen, const char *line, size_t llen,
                     ps_error *err) {
    c->stats.kept++;
    if (c->replay) {
        /* The replayed table is a full extract: its rows carry no command. */
        size_t skip = command_prefix_length(line);
        return put_line(&c->out.sorted, NULL, 0, c->sep, line + skip, llen - skip, err);
    }
    int rc = put_line(&c->out.sorted, NULL, 0, c->sep, line, llen, err);
    if (rc) return rc;
    if (c->pj.command_first) {
        switch (line[0]) {
        case 'i': c->stats.inserts++; break;
        case 'u': c->stats.updates++; break;
        case 'd': c->stats.deletes++; break;
        default: c->stats.merges++; break;
        }
    }
    return c->join.active ? join_row(c, key, klen, line, llen, err) : PS_OK;
}

/* The held row is its key's last: it is kept, unless a replay ends the key with a delete, which
 * leaves the key absent and the row with the duplicates (every input row lands in one file). */
static int settle_held(ps_cleanse *c, ps_error *err) {
    const char *line = c->dedupe.row + c->dedupe.klen;
    if (c->replay && line[0] == 'd') {
        c->stats.duplicates++;
        return put_line(&c->out.duplicates, NULL, 0, c->sep, line, c->dedupe.llen, err);
    }
    return emit_kept(c, c->dedupe.row, c->dedupe.klen, line, c->dedupe.llen, err);
}

/* Rows arrive in (key, input order); split them into kept rows and duplicates. */
static int consume(ps_cleanse *c, const char *key, size_t klen, const char *line, size_t llen,
                   ps_error *err) {
    int same = c->dedupe.have && key_cmp(c->dedupe.row, c->dedupe.klen, key, klen) == 0;
    if (!c->keep_last) {
        if (same) {
            c->stats.duplicates++;
            return put_line(&c->out.duplicates, NULL, 0, c->sep, line, llen, err);
        }
        int rc = emit_kept(c, key, klen, line, llen, err);
        return rc ? rc : hold(c, key, klen, "", 0, err);
    }
    int rc = PS_OK;
    if (same) {
        c->stats.duplicates++;
        rc = put_line(&c->out.duplicates, NULL, 0, c->sep, c->dedupe.row + c->dedupe.klen,
                      c->dedupe.llen, err);
    } else if (c->dedupe.have) {
        rc = settle_held(c, err);
    }
    return rc ? rc : hold(c, key, klen, line, llen, err);
}

static int finish_outputs(ps_cleanse *c, ps_error *err) {
    int rc = PS_OK;
    if (c->keep_last && c->dedupe.have) rc = settle_held(c, err);
    while (!rc && c->join.active && !c->join.ended) {
        rc = c->join.have ? emit_delete(c, err) : baseline_parse(c, err);
    }
    if (!rc) rc = ps_writer_flush(&c->out.sorted, err);
    if (!rc) rc = ps_writer_flush(&c->out.duplicates, err);
    if (!rc && c->join.active) rc = ps_writer_flush(&c->out.delta, err);
    if (!rc) rc = ps_flusher_finish(&c->out.flusher, err);
    if (!rc) c->out.finished = 1;
    return rc;
}

/* ---------------------------------------------------------------- lifecycle */

static int finish_input(ps_cleanse *c, ps_error *err);

int ps_cleanse_finish_input(ps_cleanse *c, ps_error *err) {
    if (c->input.sealed) return PS_OK;
    phase_switch(c, PS_PHASE_READ);
    int rc = finish_input(c, err);
    phase_switch(c, -1);
    return rc;
}

static int finish_input(ps_cleanse *c, ps_error *err) {
    int rc = ps_source_finish(&c->input.src, &c->input.tok, err);
    if (rc == PS_ERR_DECODE) {
        /* The text before the bad bytes first: a problem there comes earlier in the file. */
        ps_error decode = *err;
        rc = drain_tokenizer(c, err);
        if (!rc) *err = decode;
        return rc ? rc : decode.code;
    }
    if (!rc) rc = drain_tokenizer(c, err);
    if (rc) return rc;
    if (!c->input.header_seen)
        return ps_fail(err, PS_ERR_INPUT, 1, 0, "empty file (no header)");
    rc = ps_writer_flush(&c->out.nullpk, err);
    if (rc) return rc;
    ps_writer_release(&c->out.nullpk);
    ps_tok_release(&c->input.tok);
    ps_source_release(&c->input.src);
    c->input.tok_live = 0;
    c->input.sealed = 1;
    if (c->spill.runs.n == 0) {
        /* Everything fit: sort in place and stream from memory, never touching disk. */
        phase_switch(c, PS_PHASE_SORT);
        ps_sort_entries(entries(c), c->sort.n_entries, c->sort.arena);
        c->sort.from_memory = 1;
        c->sort.mem_next = 0;
    } else {
        /* When one merge can take every run, the last needs no file: sort it in place (while
         * the worker finishes the run before it) and merge it from memory. */
        c->sort.last_run_kept = c->sort.n_entries > 0 && can_keep_last_run(c);
        if (c->sort.last_run_kept) {
            phase_switch(c, PS_PHASE_SORT);
            ps_sort_entries(entries(c), c->sort.n_entries, c->sort.arena);
            phase_switch(c, PS_PHASE_READ);
            c->stats.runs++;
        } else if (c->sort.n_entries) {
            rc = spill_arena(c, err);
        }
        int job_rc = finish_spill_job(c, err);
        if (!rc) rc = job_rc;
        ps_free(c->sort.spare, c->sort.spare_size);
        c->sort.spare = NULL;
        c->sort.spare_size = 0;
        if (!c->sort.last_run_kept) {
            ps_free(c->sort.arena, c->sort.arena_size);
            c->sort.arena = NULL;
            c->sort.arena_size = 0;
        }
        if (rc) return rc;
    }
    return PS_OK;
}

/* The next record in (key, input order), from memory or from the final merge; 0 at the end. */
static int next_sorted(ps_cleanse *c, const char **key, size_t *klen, const char **line,
                       size_t *llen, ps_error *err) {
    if (c->sort.from_memory) {
        if (c->sort.mem_next == c->sort.n_entries) return 0;
        const ps_entry *e = entries(c);
        if (c->sort.mem_next + PREFETCH_AHEAD < c->sort.n_entries)
            __builtin_prefetch(c->sort.arena + ps_entry_offset(&e[c->sort.mem_next + PREFETCH_AHEAD]));
        const char *r = c->sort.arena + ps_entry_offset(&e[c->sort.mem_next++]);
        *klen = load_u32(r);
        *llen = load_u32(r + 4);
        *key = r + REC_HEADER;
        *line = *key + *klen;
        return 1;
    }
    (void)err;
    if (c->merge.heap_len == 0) return 0;
    run_reader *top = c->merge.heap[0];
    *key = top->key;
    *klen = top->klen;
    *line = top->line;
    *llen = top->llen;
    return 1;
}

/* Advance the reader whose record was just consumed (the heap's top). */
static int pop_merged(ps_cleanse *c, ps_error *err) {
    if (c->sort.from_memory) return PS_OK;
    run_reader *top = c->merge.heap[0];
    int st = reader_next(top, err);
    if (st < 0) return -st;
    if (st == 0) c->merge.heap[0] = c->merge.heap[--c->merge.heap_len];
    if (c->merge.heap_len) heap_sift_down(c->merge.heap, c->merge.heap_len, 0);
    return PS_OK;
}

static int merge_step(ps_cleanse *c, int64_t max_rows, int *done, ps_error *err);

int ps_cleanse_merge_step(ps_cleanse *c, int64_t max_rows, int *done, ps_error *err) {
    *done = 0;
    if (!c->input.sealed) return ps_fail(err, PS_ERR_ARG, 0, -1, "merge before the end of input");
    if (c->out.finished) {
        *done = 1;
        return PS_OK;
    }
    phase_switch(c, c->merge.readers_open && !c->merge.final_pass ? PS_PHASE_MERGE : PS_PHASE_JOIN);
    int rc = merge_step(c, max_rows, done, err);
    phase_switch(c, -1);
    return rc;
}

/* A link table's row leaving the final merge: its line, rebuilt from the key into link.line,
 * valid until the next row (whoever keeps it longer - the held row - copies it). */
static int link_line(ps_cleanse *c, const char *key, size_t klen, const char **line, size_t *llen,
                     ps_error *err) {
    int rc = grow_buffer(&c->link.line, &c->link.line_cap, line_from_key_bound(&c->pj, klen), err);
    if (!rc) rc = grow_buffer(&c->link.value, &c->link.value_cap, klen ? klen : 1, err);
    if (rc) return rc;
    *llen = line_from_key(&c->pj, c->sep, key, klen, c->link.value, c->link.line);
    *line = c->link.line;
    return PS_OK;
}

static int merge_step(ps_cleanse *c, int64_t max_rows, int *done, ps_error *err) {
    int rc;
    if (c->join.active && !c->join.header_seen) {
        if ((rc = baseline_start(c, err))) return rc;
    }
    for (int64_t emitted = 0; emitted < max_rows;) {
        if (!c->sort.from_memory && !c->merge.readers_open) {
            if ((rc = start_next_merge(c, err))) return rc;
            end_pass_if_done(c);
            continue;
        }
        if (!c->merge.final_pass && !c->sort.from_memory) {
            /* An intermediate merge: copy records to the new run in order. */
            if (c->merge.heap_len == 0) {
                if ((rc = finish_intermediate(c, err))) return rc;
                end_pass_if_done(c);
                continue;
            }
            run_reader *top = c->merge.heap[0];
            if (c->link.key_is_line) {
                rc = write_link_record(&c->merge.run_out, c->merge.out_have ? c->merge.out_key : NULL,
                                       c->merge.out_klen, top->key, top->klen, err);
                if (!rc) rc = grow_buffer(&c->merge.out_key, &c->merge.out_cap, top->klen ? top->klen : 1, err);
                if (!rc) {
                    memcpy(c->merge.out_key, top->key, top->klen);
                    c->merge.out_klen = top->klen;
                    c->merge.out_have = 1;
                }
            } else {
                rc = put_run_record(&c->merge.run_out, top->key, top->klen, top->line,
                                    top->llen, err);
            }
            if (!rc) rc = pop_merged(c, err);
            if (rc) return rc;
            emitted++;
            continue;
        }
        const char *key, *line;
        size_t klen, llen;
        int st = next_sorted(c, &key, &klen, &line, &llen, err);
        if (st == 0) {
            if (c->merge.readers_open) {
                ps_flusher_drain_punches(&c->out.flusher); /* before their files close */
                close_readers(c, 1);
            }
            c->spill.runs.n = 0;
            if ((rc = finish_outputs(c, err))) return rc;
            *done = 1;
            return PS_OK;
        }
        if (c->link.key_is_line && (rc = link_line(c, key, klen, &line, &llen, err))) return rc;
        if ((rc = consume(c, key, klen, line, llen, err)) || (rc = pop_merged(c, err))) return rc;
        emitted++;
    }
    return PS_OK;
}

const ps_source *ps_cleanse_source(const ps_cleanse *c) { return &c->input.src; }

const ps_stats *ps_cleanse_stats(ps_cleanse *c) {
    /* Null-key rows are written inside READ: move that to WRITE. The other outputs are written
     * by the flusher's thread while JOIN goes on: WRITE gets that thread's time, and JOIN loses
     * its own time in flushes (hand-offs and waits for the thread, which are no phase, as the
     * wait for the spill worker is none; or the writes themselves when no thread started). */
    ps_time *phase = c->stats.phase;
    memcpy(phase, c->timer.total, sizeof c->timer.total);
    ps_time written = c->out.sorted.flush_time;
    ps_time_add(&written, c->out.duplicates.flush_time);
    ps_time_add(&written, c->out.delta.flush_time);
    ps_time_sub(&phase[PS_PHASE_READ], c->out.nullpk.flush_time);
    ps_time_sub(&phase[PS_PHASE_JOIN], c->out.flusher.merger_time);
    ps_time_add(&phase[PS_PHASE_WRITE], c->out.nullpk.flush_time);
    ps_time_add(&phase[PS_PHASE_WRITE], written);
    return &c->stats;
}

static int32_t *copy_cols(const int32_t *cols, size_t n) {
    int32_t *copy = malloc((n ? n : 1) * sizeof *copy);
    if (copy && n) memcpy(copy, cols, n * sizeof *copy);
    return copy;
}

ps_cleanse *ps_cleanse_new(const ps_cleanse_options *o, ps_error *err) {
    if (o->n_out == 0 || o->n_key == 0 || (o->command_col >= 0 && o->out_cols[0] != o->command_col) ||
        ((o->baseline_fd >= 0) != (o->delta_fd >= 0)) || (o->baseline_fd >= 0 && o->command_col >= 0) ||
        (o->replay && (o->command_col < 0 || !o->keep_last))) {
        ps_fail(err, PS_ERR_ARG, 0, -1, "inconsistent cleanse options");
        return NULL;
    }
    ps_cleanse *c = calloc(1, sizeof *c);
    if (!c) {
        ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory");
        return NULL;
    }
    const char out_sep = o->dialect.out_separator ? o->dialect.out_separator : o->separator;
    c->sep = out_sep;
    c->budget = o->memory_budget;
    c->io_block = ps_io_block(o->memory_budget);
    c->command_col = o->command_col;
    c->keep_last = o->keep_last;
    c->replay = o->replay;
    c->record_room = ps_record_limit(o->memory_budget);
    c->merge.run_out_fd = -1;
    c->timer.phase = -1;
    ps_flusher_init(&c->out.flusher, c->io_block);
    c->join.fd = o->baseline_fd;
    c->join.active = o->baseline_fd >= 0;
    c->join.read_block = o->baseline_read_block ? o->baseline_read_block : c->io_block;
    c->spill_dir = strdup(o->spill_dir ? o->spill_dir : ".");
    c->pj.out_cols = copy_cols(o->out_cols, o->n_out);
    c->pj.n_out = o->n_out;
    c->pj.key_cols = copy_cols(o->key_cols, o->n_key);
    c->pj.n_key = o->n_key;
    c->pj.command_first = o->command_col >= 0;
    c->link.key_is_line = o->command_col < 0 && o->n_out == o->n_key;
    for (size_t i = 0; c->link.key_is_line && i < o->n_key; i++)
        c->link.key_is_line = o->out_cols[i] == o->key_cols[i];
    if (!c->spill_dir || !c->pj.out_cols || !c->pj.key_cols) goto nomem;
    if (c->join.active) {
        /* Baseline rows are formatted with the same code: all their columns, in order. */
        c->join.pj.n_out = o->n_out;
        c->join.pj.out_cols = malloc(o->n_out * sizeof(int32_t));
        c->join.pj.key_cols = copy_cols(o->baseline_key_cols, o->n_key);
        c->join.pj.n_key = o->n_key;
        if (!c->join.pj.out_cols || !c->join.pj.key_cols) goto nomem;
        for (size_t i = 0; i < o->n_out; i++) c->join.pj.out_cols[i] = (int32_t)i;
    }

    /* Sort phase: the arena gets what the input buffer, the caller's read block and the
     * null-key writer leave of the budget, less room for the tokenizer to hold the largest
     * record (and its fields) it accepts. Buffers come from mmap: untouched pages cost no
     * memory, so writers that only work later do not count now. */
    size_t reserved = 4 * c->io_block + c->record_room + ps_field_limit(o->memory_budget) * sizeof(ps_field);
    size_t arenas = o->memory_budget > 2 * reserved ? o->memory_budget - reserved : o->memory_budget / 2;
    c->sort.arena_max = arenas / 2; /* one filling, one being spilled */
    c->sort.job.fd = -1;
    c->sort.arena_size = run_arena_size(c);
    c->sort.arena = ps_alloc(c->sort.arena_size);
    if (!c->sort.arena) goto nomem;
    if (ps_tok_init(&c->input.tok, o->separator, 2 * c->io_block, o->memory_budget, PS_ERR_INPUT, err))
        goto fail;
    c->input.tok_live = 1;
    c->input.tok.budget_shares = o->budget_shares;
    if (ps_tok_set_dialect(&c->input.tok, &o->dialect, err)) goto fail;
    if (ps_source_init(&c->input.src, o->encoding, o->code_page, o->encoding_name, o->dialect.hints,
                       PS_ERR_INPUT, err))
        goto fail;
    if (ps_writer_init(&c->out.nullpk, o->nullpk_fd, "the null-key output", c->io_block, err)) goto fail;
    if (ps_writer_init(&c->out.sorted, o->sorted_fd, "the sorted output", c->io_block, err)) goto fail;
    if (ps_writer_init(&c->out.duplicates, o->duplicates_fd, "the duplicates output", c->io_block, err))
        goto fail;
    c->out.nullpk.eager_writeback = c->out.sorted.eager_writeback = c->out.duplicates.eager_writeback = 1;
    c->out.sorted.flusher = c->out.duplicates.flusher = &c->out.flusher;
    if (c->join.active) {
        if (ps_writer_init(&c->out.delta, o->delta_fd, "the delta output", c->io_block, err)) goto fail;
        c->out.delta.eager_writeback = 1;
        c->out.delta.flusher = &c->out.flusher;
        if (ps_tok_init(&c->join.tok, out_sep, 2 * c->io_block, o->memory_budget,
                        PS_ERR_BASELINE_CSV, err))
            goto fail;
        c->join.tok_live = 1;
        c->join.tok.budget_shares = o->budget_shares;
    }
    return c;
nomem:
    ps_fail(err, PS_ERR_NOMEM, 0, -1, "out of memory");
fail:
    ps_cleanse_free(c);
    return NULL;
}

void ps_cleanse_free(ps_cleanse *c) {
    if (!c) return;
    spill_job *job = &c->sort.job;
    if (job->started) {
        pthread_join(job->thread, NULL);
        __atomic_sub_fetch(&ps_live.threads, 1, __ATOMIC_RELAXED);
    }
    if (job->arena) {
        close_spill_fd(job->fd);
        ps_free(job->arena, job->arena_size);
    }
    ps_free(c->sort.spare, c->sort.spare_size);
    /* Before the readers' files close: the thread may have holes in them still to punch. And
     * before the writers: it may still be writing one of their buffers. */
    ps_error ignored;
    ps_flusher_finish(&c->out.flusher, &ignored);
    if (c->merge.readers_open) close_readers(c, 0);
    if (c->merge.run_out_fd >= 0) close_spill_fd(c->merge.run_out_fd);
    ps_writer_release(&c->merge.run_out);
    for (size_t i = 0; i < c->spill.runs.n; i++) remove_run(c, c->spill.runs.ids[i]);
    for (size_t i = 0; i < c->merge.next.n; i++) remove_run(c, c->merge.next.ids[i]);
    free(c->spill.runs.ids);
    free(c->merge.next.ids);
    free(c->merge.out_key);
    if (c->input.tok_live) ps_tok_release(&c->input.tok);
    ps_source_release(&c->input.src);
    if (c->join.tok_live) ps_tok_release(&c->join.tok);
    ps_writer_release(&c->out.nullpk);
    ps_writer_release(&c->out.sorted);
    ps_writer_release(&c->out.duplicates);
    ps_writer_release(&c->out.delta);
    ps_free(c->sort.arena, c->sort.arena_size);
    free(c->dedupe.row);
    free(c->link.line);
    free(c->link.value);
    free(c->join.cur);
    free(c->join.prev);
    free(c->pj.out_cols);
    free(c->pj.key_cols);
    free(c->join.pj.out_cols);
    free(c->join.pj.key_cols);
    free(c->spill_dir);
    free(c);
}
