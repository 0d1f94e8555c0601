/* The cleansing engine (REFERENCE §3-§4) for one table.
 *
 * Input is read with ps_cleanse_read() (the first record is the header). Each row is projected
 * to the kept columns and turned into a record {key, line}: `key` is the key columns encoded so
 * that memcmp order is REFERENCE §2 order, `line` is the row already formatted as output CSV
 * (empty for a link table, whose kept columns are exactly its key: its line is rebuilt from the
 * key as the row leaves the final merge). Rows with a null key are written to the nullpk output at once; the others fill an arena, which when
 * full is sorted by (key, input order) and spilled to a run file by a worker thread while the
 * next arena fills.
 * ps_cleanse_finish_input() then seals the input, and ps_cleanse_merge_step() streams the rows
 * in order - from the arena when everything fit in one run, else by k-way merging the runs (in
 * several passes when there are more runs than the budget has room for readers) - splitting
 * them into kept rows and duplicates and, when a baseline is given, merge-joining the kept rows
 * against it into the delta in the same pass.
 *
 * Invariant: records leave the merge in (key, input order) order. Runs hold consecutive slices of
 * the input and are merged in consecutive groups, ties going to the lower run, so input order
 * survives every pass. */
#ifndef PS_CLEANSE_H
#define PS_CLEANSE_H

#include "ps_core.h"
#include "ps_decode.h"
#include "ps_tokenizer.h"

typedef struct ps_cleanse_options {
    char separator;          /* the source's (an Excel `sep=X` line may change it) */
    int encoding;            /* PS_ENC_*: what a source without a byte-order mark is read as */
    const unsigned char *code_page; /* PS_ENC_TABLE: 256 x {length, UTF-8 bytes} */
    const char *encoding_name;      /* as errors name it */
    ps_dialect dialect;      /* lines before the header, values to trim, and the outputs'
                                separator (dialect.out_separator; 0: the source's), which the
                                baseline is read with */
    size_t memory_budget;
    int budget_shares;       /* > 1: memory_budget is a share of a budget split this many ways */
    const char *spill_dir;
    const int32_t *out_cols; /* source column of each output column, in output order */
    size_t n_out;
    const int32_t *key_cols; /* source columns of the key, in key order */
    size_t n_key;
    int32_t command_col;     /* source column of a change file's command, else -1; must be out_cols[0] */
    int keep_last;           /* change file: the last row of a key wins */
    int replay;              /* initial/complete change file (needs keep_last): the last row of
                                a key is kept without its command unless it is a delete, and an
                                empty command is an insert */
    int nullpk_fd, sorted_fd, duplicates_fd;
    int delta_fd;            /* -1 unless a baseline is joined */
    int baseline_fd;         /* -1, or the baseline positioned at its start */
    const int32_t *baseline_key_cols; /* key columns within the baseline's columns */
    size_t baseline_read_block; /* bytes per baseline read; 0: ps_io_block(). Tests cut the
                                   baseline's records at every position with small reads. */
} ps_cleanse_options;

/* Where a table's time goes, so that a regression names its phase. Each moment of the
 * caller's thread inside the engine counts in exactly one phase, except waits for the spill
 * worker, which count in none: SORT and SPILL are the worker's own time, overlapping READ. */
enum ps_phase {
    PS_PHASE_READ,  /* reading the source, parsing, building records, null-key rows */
    PS_PHASE_SORT,  /* sorting the arena's index */
    PS_PHASE_SPILL, /* writing sorted runs */
    PS_PHASE_MERGE, /* intermediate merge passes (more runs than one merge can read) */
    PS_PHASE_JOIN,  /* the final pass: rows in order into kept rows and duplicates, and the
                     * merge-join with the baseline when there is one */
    PS_PHASE_WRITE, /* write() and writeback calls of the outputs */
    PS_PHASES
};

typedef struct ps_stats {
    int64_t rows_read, kept, null_keys, duplicates;
    int64_t inserts, updates, deletes, merges;
    int64_t runs, merge_passes;
    int64_t spill_bytes; /* bytes written to run files, intermediate merge passes included */
    ps_time phase[PS_PHASES];
} ps_stats;

typedef struct ps_cleanse ps_cleanse;

/* The read size the budget affords; callers should feed blocks of about this size. */
size_t ps_io_block(size_t memory_budget);

ps_cleanse *ps_cleanse_new(const ps_cleanse_options *options, ps_error *err);
/* Reads up to max_bytes of the source from fd straight into the tokenizer's buffer and
 * processes every complete record; *got is 0 at the end of the file. Small max_bytes put
 * block ends anywhere, which the tests use to cut quotes and CRLFs at every position. */
int ps_cleanse_read(ps_cleanse *c, int fd, size_t max_bytes, size_t *got, ps_error *err);
int ps_cleanse_finish_input(ps_cleanse *c, ps_error *err);
/* Emits up to max_rows rows; *done is set once every output is complete and flushed. */
int ps_cleanse_merge_step(ps_cleanse *c, int64_t max_rows, int *done, ps_error *err);
const ps_stats *ps_cleanse_stats(ps_cleanse *c);
/* How the source is read (decided by its first bytes): its kind, byte-order mark, name. */
const ps_source *ps_cleanse_source(const ps_cleanse *c);
/* Frees everything, closing and deleting any spill file still there. Output fds are the
 * caller's and are not closed. */
void ps_cleanse_free(ps_cleanse *c);

#endif
