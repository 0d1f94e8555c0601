#include "ps_decode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char *const kind_names[] = {"UTF-8", "UTF-16 LE", "UTF-16 BE", "UTF-32 LE", "UTF-32 BE"};

int ps_source_init(ps_source *s, int requested, const unsigned char *table, const char *name,
                   int hints, int error_code, ps_error *err) {
    memset(s, 0, sizeof *s);
    if (requested < PS_ENC_UTF8 || requested > PS_ENC_TABLE || (requested == PS_ENC_TABLE && !table))
        return ps_fail(err, PS_ERR_ARG, 0, -1, "bad encoding");
    s->requested = requested;
    s->hints = hints;
    s->error_code = error_code;
    if (table) {
        memcpy(s->table, table, sizeof s->table);
        s->ascii_identity = 1;
        for (int b = 0; b < 0x80; b++)
            if (s->table[b][0] != 1 || s->table[b][1] != b) s->ascii_identity = 0;
    }
    snprintf(s->name, sizeof s->name, "%s",
             requested == PS_ENC_TABLE ? (name ? name : "the code page") : kind_names[requested]);
    return PS_OK;
}

void ps_source_release(ps_source *s) {
    ps_free(s->raw, s->raw_cap);
    s->raw = NULL;
    s->raw_cap = 0;
}

static const struct {
    const char *mark;
    int len, kind;
} marks[] = {
    /* UTF-32 LE starts like UTF-16 LE, so it goes first. A UTF-8 mark stays in the text: the
     * tokenizer drops it, as for any UTF-8 file. */
    {"\xFF\xFE\x00\x00", 4, PS_ENC_UTF32LE},
    {"\x00\x00\xFE\xFF", 4, PS_ENC_UTF32BE},
    {"\xEF\xBB\xBF", 3, PS_ENC_UTF8},
    {"\xFF\xFE", 2, PS_ENC_UTF16LE},
    {"\xFE\xFF", 2, PS_ENC_UTF16BE},
};

/* From the file's first bytes (in carry: 4, or fewer when that is the whole file). */
static int decide(ps_source *s, ps_error *err) {
    const unsigned char *b = s->carry;
    size_t n = s->ncarry;
    s->decided = 1;
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        if (n >= (size_t)marks[i].len && memcmp(b, marks[i].mark, (size_t)marks[i].len) == 0) {
            s->kind = marks[i].kind;
            if (s->kind != PS_ENC_UTF8) {
                s->bom_len = marks[i].len;
                memmove(s->carry, s->carry + s->bom_len, n - (size_t)s->bom_len);
                s->ncarry -= (size_t)s->bom_len;
                s->offset += s->bom_len;
                snprintf(s->name, sizeof s->name, "%s", kind_names[s->kind]);
            }
            return PS_OK;
        }
    }
    s->kind = s->requested;
    if (s->kind != PS_ENC_UTF8 || !s->hints || n < 4) return PS_OK;
    /* A header is text: NUL bytes in its first characters betray UTF-16 or UTF-32. */
    static const struct {
        unsigned char zero[4];
        const char *name, *option;
    } shapes[] = {
        {{0, 1, 1, 1}, "UTF-32 LE", "utf-32le"}, {{1, 1, 1, 0}, "UTF-32 BE", "utf-32be"},
        {{0, 1, 0, 1}, "UTF-16 LE", "utf-16le"}, {{1, 0, 1, 0}, "UTF-16 BE", "utf-16be"},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int match = 1;
        for (int k = 0; k < 4; k++) match &= (b[k] != 0) == !shapes[i].zero[k];
        if (match)
            return ps_fail(err, s->error_code, 1, 0,
                           "not UTF-8: the file looks like %s without a byte-order mark (NUL "
                           "bytes between its characters); read it with --encoding %s",
                           shapes[i].name, shapes[i].option);
    }
    return PS_OK;
}

static inline size_t put_utf8(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int decode_utf16(ps_source *s, const unsigned char *in, size_t n, char *out, size_t *used,
                        size_t *produced, ps_error *err) {
    const int le = s->kind == PS_ENC_UTF16LE;
    size_t i = 0, o = 0;
    for (;;) {
#if defined(__SSE2__)
        /* Mostly ASCII: 8 code units a step, each under 0x80, packed to 8 bytes. */
        const __m128i high = _mm_set1_epi16((short)0xFF80), zero = _mm_setzero_si128();
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(in + i));
            if (!le) v = _mm_or_si128(_mm_slli_epi16(v, 8), _mm_srli_epi16(v, 8));
            if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(v, high), zero)) != 0xFFFF) break;
            _mm_storel_epi64((__m128i *)(out + o), _mm_packus_epi16(v, v));
            i += 16;
            o += 8;
        }
#endif
        if (i + 2 > n) break;
        uint32_t u = le ? (uint32_t)in[i] | (uint32_t)in[i + 1] << 8
                        : (uint32_t)in[i] << 8 | (uint32_t)in[i + 1];
        if (u < 0xD800 || u > 0xDFFF) {
            o += put_utf8(out + o, u);
            i += 2;
            continue;
        }
        if (u <= 0xDBFF) {
            if (i + 4 > n) break; /* the pair goes on in the next block */
            uint32_t low = le ? (uint32_t)in[i + 2] | (uint32_t)in[i + 3] << 8
                              : (uint32_t)in[i + 2] << 8 | (uint32_t)in[i + 3];
            if (low >= 0xDC00 && low <= 0xDFFF) {
                o += put_utf8(out + o, 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00));
                i += 4;
                continue;
            }
        }
        *used = i;
        *produced = o;
        return ps_fail(err, PS_ERR_DECODE, 0, s->offset + (int64_t)i,
                       "invalid %s: unpaired surrogate 0x%04X", s->name, (unsigned)u);
    }
    *used = i;
    *produced = o;
    return PS_OK;
}

static int decode_utf32(ps_source *s, const unsigned char *in, size_t n, char *out, size_t *used,
                        size_t *produced, ps_error *err) {
    const int le = s->kind == PS_ENC_UTF32LE;
    size_t i = 0, o = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t cp = le ? (uint32_t)in[i] | (uint32_t)in[i + 1] << 8 | (uint32_t)in[i + 2] << 16 |
                               (uint32_t)in[i + 3] << 24
                         : (uint32_t)in[i] << 24 | (uint32_t)in[i + 1] << 16 |
                               (uint32_t)in[i + 2] << 8 | (uint32_t)in[i + 3];
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            *used = i;
            *produced = o;
            return ps_fail(err, PS_ERR_DECODE, 0, s->offset + (int64_t)i,
                           "invalid %s: 0x%08X is not a character", s->name, (unsigned)cp);
        }
        o += put_utf8(out + o, cp);
    }
    *used = i;
    *produced = o;
    return PS_OK;
}

static int decode_table(ps_source *s, const unsigned char *in, size_t n, char *out, size_t *used,
                        size_t *produced, ps_error *err) {
    size_t i = 0, o = 0;
    while (i < n) {
#if defined(__SSE2__)
        if (s->ascii_identity) {
            while (i + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i *)(in + i));
                if (_mm_movemask_epi8(v)) break;
                _mm_storeu_si128((__m128i *)(out + o), v);
                i += 16;
                o += 16;
            }
            if (i == n) break;
        }
#endif
        const unsigned char *e = s->table[in[i]];
        if (!e[0]) {
            *used = i;
            *produced = o;
            return ps_fail(err, PS_ERR_DECODE, 0, s->offset + (int64_t)i,
                           "byte 0x%02X is no character in %s", in[i], s->name);
        }
        memcpy(out + o, e + 1, 3); /* out has room for 3 bytes a byte */
        o += e[0];
        i++;
    }
    *used = i;
    *produced = o;
    return PS_OK;
}

int ps_decode(ps_source *s, const unsigned char *in, size_t n, char *out, size_t *used,
              size_t *produced, ps_error *err) {
    int rc;
    switch (s->kind) {
    case PS_ENC_UTF16LE:
    case PS_ENC_UTF16BE:
        rc = decode_utf16(s, in, n, out, used, produced, err);
        break;
    case PS_ENC_UTF32LE:
    case PS_ENC_UTF32BE:
        rc = decode_utf32(s, in, n, out, used, produced, err);
        break;
    case PS_ENC_TABLE:
        rc = decode_table(s, in, n, out, used, produced, err);
        break;
    default:
        return ps_fail(err, PS_ERR_ARG, 0, -1, "nothing to decode");
    }
    s->offset += (int64_t)*used;
    return rc;
}

/* The text before a bad character goes to the tokenizer; the error waits (ps_source.failed). */
static int hold_error(ps_source *s, ps_tokenizer *t, const char *text, size_t n, ps_error *err) {
    s->pending = *err;
    s->failed = 1;
    s->ncarry = 0;
    return n ? ps_tok_feed(t, text, n, err) : PS_OK;
}

/* Decoded bytes of in[0, n) into the tokenizer, 64 KiB of input at a time so that the room
 * reserved stays small; a cut character at the end goes to carry. */
#define DECODE_STEP ((size_t)64 << 10)

static int transcode(ps_source *s, ps_tokenizer *t, const unsigned char *in, size_t n, ps_error *err) {
    /* First the character cut at the end of the previous block, completed from this one. */
    while (s->ncarry && n) {
        size_t k = s->ncarry, m = n < sizeof s->carry - k ? n : sizeof s->carry - k;
        unsigned char joined[sizeof s->carry];
        memcpy(joined, s->carry, k);
        memcpy(joined + k, in, m);
        char out[3 * sizeof s->carry + 4];
        size_t used = 0, produced = 0;
        int rc = ps_decode(s, joined, k + m, out, &used, &produced, err);
        if (rc == PS_ERR_DECODE) return hold_error(s, t, out, produced, err);
        if (!rc) rc = ps_tok_feed(t, out, produced, err);
        if (rc) return rc;
        if (used >= k) {
            in += used - k;
            n -= used - k;
            s->ncarry = 0;
        } else { /* still cut: every byte of this block belongs to it (used is 0) */
            memcpy(s->carry, joined, k + m);
            s->ncarry = k + m;
            in += m;
            n -= m;
        }
    }
    while (n) {
        size_t step = n < DECODE_STEP ? n : DECODE_STEP;
        char *room = ps_tok_reserve(t, 3 * step + 4, err);
        if (!room) return err->code;
        size_t used = 0, produced = 0;
        int rc = ps_decode(s, in, step, room, &used, &produced, err);
        if (rc == PS_ERR_DECODE) {
            ps_tok_commit(t, produced);
            return hold_error(s, t, NULL, 0, err);
        }
        if (rc) return rc;
        ps_tok_commit(t, produced);
        in += used;
        n -= used;
        if (used < step && step == n + used) {
            /* A character cut by the end of the block: kept for the next one. */
            memcpy(s->carry, in, n);
            s->ncarry = n;
            return PS_OK;
        }
    }
    return PS_OK;
}

int ps_source_push(ps_source *s, ps_tokenizer *t, const char *data, size_t n, ps_error *err) {
    const unsigned char *in = (const unsigned char *)data;
    if (s->failed) return PS_OK;
    if (!s->decided) {
        size_t take = 4 - s->ncarry < n ? 4 - s->ncarry : n;
        memcpy(s->carry + s->ncarry, in, take);
        s->ncarry += take;
        in += take;
        n -= take;
        if (s->ncarry < 4) return PS_OK;
        int rc = decide(s, err);
        if (rc) return rc;
        if (s->kind == PS_ENC_UTF8) {
            rc = ps_tok_feed(t, (const char *)s->carry, s->ncarry, err);
            s->offset += (int64_t)s->ncarry;
            s->ncarry = 0;
            if (rc) return rc;
        }
    }
    if (s->kind == PS_ENC_UTF8) {
        s->offset += (int64_t)n;
        return ps_tok_feed(t, (const char *)in, n, err);
    }
    return transcode(s, t, in, n, err);
}

int ps_source_finish(ps_source *s, ps_tokenizer *t, ps_error *err) {
    int rc;
    if (s->failed) return ps_source_error(s, err);
    if (!s->decided) {
        rc = decide(s, err);
        if (rc) return rc;
        if (s->kind == PS_ENC_UTF8) {
            rc = ps_tok_feed(t, (const char *)s->carry, s->ncarry, err);
            s->offset += (int64_t)s->ncarry;
            s->ncarry = 0;
            if (rc) return rc;
        }
    }
    if (s->kind != PS_ENC_UTF8 && s->ncarry) {
        /* What is held may be whole characters (a file of 4 bytes or less): decode them. */
        unsigned char held[sizeof s->carry];
        size_t k = s->ncarry;
        memcpy(held, s->carry, k);
        s->ncarry = 0;
        rc = transcode(s, t, held, k, err);
        if (rc) return rc;
    }
    if (s->failed) return ps_source_error(s, err);
    if (s->ncarry) {
        if ((s->kind == PS_ENC_UTF16LE || s->kind == PS_ENC_UTF16BE) && s->ncarry >= 2) {
            uint32_t u = s->kind == PS_ENC_UTF16LE ? (uint32_t)s->carry[0] | (uint32_t)s->carry[1] << 8
                                                   : (uint32_t)s->carry[0] << 8 | (uint32_t)s->carry[1];
            ps_fail(err, PS_ERR_DECODE, 0, s->offset, "invalid %s: unpaired surrogate 0x%04X",
                    s->name, (unsigned)u);
        } else {
            ps_fail(err, PS_ERR_DECODE, 0, s->offset, "invalid %s: the file ends inside a character",
                    s->name);
        }
        return hold_error(s, t, NULL, 0, err) ? err->code : ps_source_error(s, err);
    }
    ps_tok_set_eof(t);
    return PS_OK;
}
