/* The reference server's one reader of session files: a complete or initial session's
 * `<Table>.sorted.csv` (rows as key and stored line, ps_upload_row) and an incremental one's
 * `<Table>.sorted.delta.csv` (records as fields, ps_upload_record).
 *
 * It reads the file through the agent's own tokenizer (ps_tokenizer: the same dialect the agent
 * reads its sources with) and turns each row into what the store keeps:
 *
 *   - the encoded key: each key value's UTF-8 bytes with 0x00 escaped as 0x00 0x01, then
 *     0x00 0x00 (prepsync.server.store.encode_key), so that memcmp order is key order;
 *   - the canonical line: the values joined by ',' with the output quoting (ps_format.h: a
 *     value is quoted only when it holds ',', a quote, CR or LF; quotes inside are doubled),
 *     whatever separator the file uses.
 *
 * Per row it checks what the server refuses in a complete load: a null key value, a key not
 * above the previous one (duplicate or out of order, when asked), a CR outside quotes, and
 * (the tokenizer) the width fixed by the header. It counts, for each association column pair
 * it is given, the rows where both values are non-null (the links a load into an empty table
 * inserts), so that no per-row Python is needed for that.
 *
 * Errors fill the ps_error (code PS_ERR_INPUT with the record's line, PS_ERR_IO, PS_ERR_NOMEM);
 * the caller names the file. */
#ifndef PS_UPLOAD_H
#define PS_UPLOAD_H

#include "ps_core.h"
#include "ps_tokenizer.h"

typedef struct ps_upload {
    ps_tokenizer tok;
    int fd;
    int tok_ready;
    size_t read_block;
    /* Set by ps_upload_configure, after the header: */
    size_t nkeys;
    size_t *key_cols;
    int check_order;
    size_t npairs;
    size_t *pair_cols;   /* 2 * npairs column positions */
    int64_t *pair_rows;  /* per pair: rows read with both values non-null */
    /* The last row read by ps_upload_row: */
    char *key;
    size_t key_len, key_cap;
    char *line;
    size_t line_len, line_cap;
    int64_t line_number; /* physical line the record starts on */
    char *previous;      /* the key of the row before (order check) */
    size_t previous_len, previous_cap;
    int have_previous;
    /* ps_upload_copy_block's output: the block, and 0 before the signature, 1 while rows
     * remain, 2 once the trailer is out. */
    char *copy;
    size_t copy_len, copy_cap;
    int copy_state;
} ps_upload;

/* Opens `path` for reading; `max_record` bounds one record (bytes). */
int ps_upload_open(ps_upload *u, const char *path, char separator, size_t max_record,
                   ps_error *err);
void ps_upload_close(ps_upload *u);
/* The next record (the header first): PS_TOK_RECORD with rec filled (valid until the next
 * call), PS_TOK_END, or an error code. */
int ps_upload_next(ps_upload *u, ps_record *rec, ps_error *err);
/* Key columns (positions in the header), whether keys must ascend, and the link column pairs. */
int ps_upload_configure(ps_upload *u, const size_t *key_cols, size_t nkeys, int check_order,
                        const size_t *pair_cols, size_t npairs, ps_error *err);
/* The canonical line of a key-only row (every column a key column, in header order) from its
 * encoded key: the values, quoted as the stored lines are, joined by ','. `scratch` needs room
 * for key_len bytes, `out` for 2 * key_len; returns the line's length. */
size_t ps_key_line(const char *key, size_t key_len, char *scratch, char *out);
/* The next data record as fields, checked as a row is (width, UTF-8, no CR outside quotes)
 * but with no key or line built: how a delta, whose key columns follow its command, is read.
 * PS_TOK_RECORD with rec filled (valid until the next call), PS_TOK_END, or an error code. */
int ps_upload_record(ps_upload *u, ps_record *rec, ps_error *err);
/* The next data row: PS_TOK_RECORD with u->key / u->line / u->line_number set, PS_TOK_END,
 * or an error code. */
int ps_upload_row(ps_upload *u, ps_error *err);
/* The next rows in PostgreSQL's binary COPY format (FORMAT binary, every column text), for a
 * store that loads the file with COPY: u->copy[0, u->copy_len) holds whole tuples, at least
 * `target` bytes of them unless the file ended; the first block starts with the signature, the
 * one that reaches the end of the file ends with the trailer, and a call after that gives an
 * empty block. Each row is checked as by ps_upload_row (the key built, the order, the pairs
 * counted), but no canonical line is built. An empty value, quoted or not, is NULL (-1). Values
 * are the field's bytes unescaped (the tokenizer checked they are UTF-8). *rows: the rows in
 * this block. A bad row stops the block with the error (the block is then to be thrown away). */
int ps_upload_copy_block(ps_upload *u, size_t target, int64_t *rows, ps_error *err);

#endif
