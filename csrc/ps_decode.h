/* Reading a source in the encoding it was written in (docs/REFERENCE.md, "Encodings").
 *
 * A ps_source stands between the bytes of a file and the tokenizer, which only ever sees
 * UTF-8. It decides the encoding from the first bytes (a byte-order mark says what it is and
 * wins; else the encoding asked for; else UTF-8), then either hands the bytes through untouched
 * (UTF-8: the engine then reads straight into the tokenizer's buffer, as without a ps_source)
 * or transcodes them to UTF-8 as they stream: UTF-16 LE/BE, UTF-32 LE/BE, or a single-byte
 * code page given as a 256-entry table built by the caller.
 *
 * A character cut by the end of a block is carried to the next one (at most 3 bytes), so blocks
 * may end anywhere. A byte sequence that is no character (an unpaired surrogate, a code point
 * past U+10FFFF, a byte the code page leaves undefined, a file ending inside a character) is an
 * error of code PS_ERR_DECODE whose offset is the source's own (its first byte) and whose line is
 * 0: the caller, which can read the file again, finds the line. Errors the tokenizer reports in
 * transcoded text carry offsets in that text; with `kind` and `bom_len` the caller maps them back
 * to the file's bytes (prepsync/dialect.py, source_offsets), reading the file again: only errors
 * pay for it. */
#ifndef PS_DECODE_H
#define PS_DECODE_H

#include "ps_core.h"
#include "ps_tokenizer.h"

enum ps_encoding {
    PS_ENC_UTF8 = 0,
    PS_ENC_UTF16LE = 1,
    PS_ENC_UTF16BE = 2,
    PS_ENC_UTF32LE = 3,
    PS_ENC_UTF32BE = 4,
    PS_ENC_TABLE = 5, /* a single-byte code page */
};

typedef struct ps_source {
    int requested;      /* PS_ENC_*: what to read a file without a byte-order mark as */
    int kind;           /* what is read, once decided */
    int decided;
    int hints;          /* a BOM-less UTF-16/32 file read as UTF-8 is refused naming it */
    int bom_len;        /* bytes of the byte-order mark dropped */
    int error_code;
    unsigned char table[256][4]; /* PS_ENC_TABLE: length (0 = undefined), then UTF-8 bytes */
    int ascii_identity; /* the table maps 0x00-0x7F to themselves */
    char name[40];      /* the encoding as errors name it */
    unsigned char carry[8];
    size_t ncarry;      /* bytes of a cut character (or, undecided, of the file's start) */
    int64_t offset;     /* source offset of the next byte pushed (carry excluded) */
    char *raw;          /* the engine's read buffer when transcoding */
    size_t raw_cap;
    /* A bad character: the text before it was pushed, and this error waits until the tokenizer
     * has taken what it can of that text, so that of two problems the first in the file is the
     * one reported, however the file is cut into blocks. */
    int failed;
    ps_error pending;
} ps_source;

/* table: 256 x 4 bytes for PS_ENC_TABLE, else NULL. name: for errors ("windows-1252"). */
int ps_source_init(ps_source *s, int requested, const unsigned char *table, const char *name,
                   int hints, int error_code, ps_error *err);
void ps_source_release(ps_source *s);
/* Pushes n source bytes (the next ones of the file) into the tokenizer, decoded. After a bad
 * character it returns PS_OK with s->failed set: the caller takes the records it can, then
 * reports ps_source_error(). */
int ps_source_push(ps_source *s, ps_tokenizer *t, const char *data, size_t n, ps_error *err);
/* The end of the file: decides if not yet, checks no character is cut, sets the tokenizer's EOF. */
int ps_source_finish(ps_source *s, ps_tokenizer *t, ps_error *err);
static inline int ps_source_error(const ps_source *s, ps_error *err) {
    *err = s->pending;
    return err->code;
}
static inline int ps_source_transcodes(const ps_source *s) { return s->decided && s->kind != PS_ENC_UTF8; }

/* Decodes whole characters of in[0, n) into out (3 * n + 4 bytes of room); *used is how many
 * input bytes were consumed (the rest is a character cut short: fewer than 4 bytes). */
int ps_decode(ps_source *s, const unsigned char *in, size_t n, char *out, size_t *used,
              size_t *produced, ps_error *err);

#endif
