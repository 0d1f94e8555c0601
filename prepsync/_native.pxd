# Declarations of the C core (csrc/); nothing but cdef extern blocks belongs here.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t


cdef extern from "ps_core.h" nogil:
    ctypedef struct ps_time:
        int64_t wall_ns, cpu_ns

    enum:
        PREPSYNC_DEBUG_BUILD
        PS_OK
        PS_ERR_INPUT
        PS_ERR_BASELINE_CSV
        PS_ERR_BASELINE
        PS_ERR_IO
        PS_ERR_NOMEM
        PS_ERR_ARG
        PS_ERR_DECODE

    ctypedef struct ps_error:
        int code
        int64_t line
        int64_t offset
        char message[512]

    ctypedef struct ps_counters:
        int64_t buffers
        int64_t spill_files
        int64_t threads

    ps_counters ps_live


cdef extern from "ps_tokenizer.h" nogil:
    enum:
        PS_TOK_RECORD
        PS_TOK_NEED_MORE
        PS_TOK_END

    ctypedef struct ps_field:
        const char *data
        uint32_t len
        uint8_t quoted
        uint8_t escaped
        uint8_t special

    ctypedef struct ps_record:
        ps_field *fields
        size_t nfields
        int64_t line
        int64_t offset

    ctypedef struct ps_tokenizer:
        int budget_shares
        char separator

    ctypedef struct ps_dialect:
        int64_t skip_lines
        int sep_hint
        char out_separator
        const char *trim
        size_t trim_bytes
        int hints

    int ps_tok_set_dialect(ps_tokenizer *t, const ps_dialect *d, ps_error *err)

    int ps_tok_init(ps_tokenizer *t, char separator, size_t initial_cap, size_t memory_budget,
                    int error_code, ps_error *err)
    void ps_tok_release(ps_tokenizer *t)
    int ps_tok_feed(ps_tokenizer *t, const char *data, size_t n, ps_error *err)
    void ps_tok_set_eof(ps_tokenizer *t)
    int ps_tok_next(ps_tokenizer *t, ps_record *rec, ps_error *err)
    size_t ps_field_unescape(const ps_field *f, char *out)


cdef extern from "ps_decode.h" nogil:
    ctypedef struct ps_source:
        int kind
        int decided
        int bom_len
        int failed

    int ps_source_init(ps_source *s, int requested, const unsigned char *table, const char *name,
                       int hints, int error_code, ps_error *err)
    void ps_source_release(ps_source *s)
    int ps_source_push(ps_source *s, ps_tokenizer *t, const char *data, size_t n, ps_error *err)
    int ps_source_finish(ps_source *s, ps_tokenizer *t, ps_error *err)
    int ps_source_error(const ps_source *s, ps_error *err)


cdef extern from "ps_cleanse.h" nogil:
    ctypedef struct ps_cleanse_options:
        char separator
        int encoding
        const unsigned char *code_page
        const char *encoding_name
        ps_dialect dialect
        size_t memory_budget
        int budget_shares
        const char *spill_dir
        const int32_t *out_cols
        size_t n_out
        const int32_t *key_cols
        size_t n_key
        int32_t command_col
        int keep_last
        int replay
        int nullpk_fd
        int sorted_fd
        int duplicates_fd
        int delta_fd
        int baseline_fd
        const int32_t *baseline_key_cols
        size_t baseline_read_block

    enum:
        PS_PHASE_READ, PS_PHASE_SORT, PS_PHASE_SPILL, PS_PHASE_MERGE, PS_PHASE_JOIN
        PS_PHASE_WRITE, PS_PHASES

    ctypedef struct ps_stats:
        int64_t rows_read, kept, null_keys, duplicates
        int64_t inserts, updates, deletes, merges
        int64_t runs, merge_passes
        int64_t spill_bytes
        ps_time phase[PS_PHASES]

    ctypedef struct ps_cleanse:
        pass

    size_t ps_io_block(size_t memory_budget)
    ps_cleanse *ps_cleanse_new(const ps_cleanse_options *options, ps_error *err)
    int ps_cleanse_read(ps_cleanse *c, int fd, size_t max_bytes, size_t *got, ps_error *err)
    int ps_cleanse_finish_input(ps_cleanse *c, ps_error *err)
    int ps_cleanse_merge_step(ps_cleanse *c, int64_t max_rows, int *done, ps_error *err)
    const ps_stats *ps_cleanse_stats(ps_cleanse *c)
    const ps_source *ps_cleanse_source(const ps_cleanse *c)
    void ps_cleanse_free(ps_cleanse *c)


cdef extern from "ps_sort.h" nogil:
    ctypedef struct ps_entry:
        pass

    void ps_entry_init(ps_entry *e, const char *key, size_t klen, uint64_t off)
    void ps_sort_entries(ps_entry *entries, size_t n, const char *arena)
    uint64_t ps_entry_offset(const ps_entry *e)


cdef extern from "ps_upload.h" nogil:
    ctypedef struct ps_upload:
        char *key
        size_t key_len
        char *line
        size_t line_len
        int64_t line_number
        int64_t *pair_rows
        char *copy
        size_t copy_len

    int ps_upload_open(ps_upload *u, const char *path, char separator, size_t max_record,
                       ps_error *err)
    void ps_upload_close(ps_upload *u)
    int ps_upload_next(ps_upload *u, ps_record *rec, ps_error *err)
    int ps_upload_record(ps_upload *u, ps_record *rec, ps_error *err)
    int ps_upload_configure(ps_upload *u, const size_t *key_cols, size_t nkeys, int check_order,
                            const size_t *pair_cols, size_t npairs, ps_error *err)
    int ps_upload_row(ps_upload *u, ps_error *err)
    int ps_upload_copy_block(ps_upload *u, size_t target, int64_t *rows, ps_error *err)
    size_t ps_key_line(const char *key, size_t key_len, char *scratch, char *out)


cdef extern from "ps_store.h" nogil:
    ctypedef struct ps_store_rows:
        const char *key
        size_t key_len
        const char *line
        size_t line_len

    int ps_store_load(const char *module_path, ps_error *err)
    int ps_store_loaded()
    int ps_store_rows_open(ps_store_rows *r, const char *path, int64_t tid, const char *after,
                           size_t after_len, ps_error *err)
    int ps_store_rows_next(ps_store_rows *r, ps_error *err)
    void ps_store_rows_close(ps_store_rows *r)
    int ps_store_capture_begin(ps_error *err)
    void *ps_store_capture_end()
    int ps_store_bulk_load(void *db, ps_upload *u, int64_t tid, int64_t seq, int key_only,
                           int64_t *rows, ps_error *err)


cdef extern from "ps_pgcopy.h" nogil:
    ctypedef struct ps_pgcopy:
        char *key
        size_t key_len
        char *line
        size_t line_len
        int eof
        int64_t rows
        char sqlstate[6]

    int ps_pgcopy_load(const char *module_path, ps_error *err)
    int ps_pgcopy_loaded()
    int ps_pgcopy_open(ps_pgcopy *c, void *conn, size_t nfields, const size_t *key_cols,
                       size_t nkeys, ps_error *err)
    void ps_pgcopy_close(ps_pgcopy *c)
    int ps_pgcopy_feed(ps_pgcopy *c, const char *data, size_t n, ps_error *err)
    void ps_pgcopy_feed_end(ps_pgcopy *c)
    int ps_pgcopy_fill(ps_pgcopy *c, ps_error *err)
    int ps_pgcopy_row(ps_pgcopy *c, ps_error *err)
