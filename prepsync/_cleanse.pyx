# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin wrapper over the C cleansing engine (csrc/ps_cleanse.c).

It owns one engine per table, releases the GIL around the work, and turns the engine's error
codes into the exceptions of prepsync.errors. All policy (which columns, which files, what
happens on failure) lives in prepsync.pipeline.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from prepsync cimport _native as c

from prepsync import dialect
from prepsync.errors import BaselineError, InputError, PrepsyncError


cdef int raise_error(
    c.ps_error *err, str source, str table, str baseline, object encoding=None,
    const c.ps_source *reading=NULL
) except -1:
    message = err.message.decode("utf-8", "replace")
    line = err.line if err.line > 0 else None
    offset = err.offset if err.offset >= 0 else None
    if err.code == c.PS_ERR_DECODE or (
        err.code == c.PS_ERR_INPUT and offset is not None and reading != NULL
        and reading.decided and reading.kind != dialect.UTF8
    ):
        # Transcoded: name the file's own byte (the engine counted in the text it made).
        codec = encoding.codec if reading.kind == dialect.TABLE else dialect.KIND_CODECS[reading.kind]
        if err.code == c.PS_ERR_DECODE:
            line = dialect.line_at(source, codec, reading.bom_len, offset)
        else:
            offset = dialect.source_offsets(source, reading.kind, codec, reading.bom_len, [offset])[0]
        raise InputError(source, message, line, offset)
    if err.code == c.PS_ERR_INPUT:
        raise InputError(source, message, line, offset)
    if err.code == c.PS_ERR_BASELINE_CSV:
        raise BaselineError(table, f"baseline {baseline}, line {line}: {message}")
    if err.code == c.PS_ERR_BASELINE:
        raise BaselineError(table, message)
    if err.code == c.PS_ERR_NOMEM:
        raise MemoryError(message)
    if err.code == c.PS_ERR_IO:
        raise PrepsyncError(f"table {table}: {message}")
    raise ValueError(message)


cdef int32_t *int32_array(object values) except NULL:
    cdef Py_ssize_t n = len(values), i
    cdef int32_t *out = <int32_t *>malloc((n if n else 1) * sizeof(int32_t))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        out[i] = values[i]
    return out


cdef char separator_byte(bytes separator) except 0:
    if len(separator) != 1:
        raise ValueError("the separator is one byte")
    return (<char *>separator)[0]


def io_block(Py_ssize_t memory_budget):
    """The read size the engine expects for this budget."""
    return c.ps_io_block(memory_budget)


DEBUG_BUILD = bool(c.PREPSYNC_DEBUG_BUILD)

#: The engine's phases (enum ps_phase), in order: where each table's time went.
PHASE_NAMES = ("read", "sort", "spill", "merge", "join", "write")


def live_counters():
    """Native buffers, spill files and engine threads currently live; all three are 0 between
    runs (tests assert that nothing leaks)."""
    return {
        "buffers": c.ps_live.buffers,
        "spill_files": c.ps_live.spill_files,
        "threads": c.ps_live.threads,
    }


cdef bytes trim_bytes(object settings):
    return dialect.encode_trim(settings.trim) if settings is not None else b""


cdef void fill_dialect(c.ps_dialect *d, object settings, bytes trim, char out_separator):
    d.skip_lines = settings.skip_lines if settings is not None else 0
    d.sep_hint = settings is not None
    d.hints = settings is not None
    d.out_separator = out_separator
    d.trim = trim
    d.trim_bytes = len(trim)


def read_header(
    str path, bytes separator, Py_ssize_t memory_budget, Py_ssize_t block=65536,
    int budget_shares=1, object settings=None
):
    """The header of a CSV file, parsed and checked exactly as the engine does (with the same
    size limits for the budget): (names, the byte offset of each name, the header's line).

    ``settings`` (a :class:`prepsync.dialect.ReadSettings`) reads a source as the engine does:
    its encoding, its own separator, lines before the header, values to trim; ``separator`` is
    then the outputs'. Without it the file is plain UTF-8 with ``separator`` (a baseline)."""
    cdef c.ps_tokenizer tok
    cdef c.ps_source reading
    cdef c.ps_record rec
    cdef c.ps_error err
    cdef c.ps_dialect options
    cdef int status
    cdef Py_ssize_t i
    cdef bytes chunk
    cdef char *scratch
    cdef const c.ps_field *f
    cdef bytes trim = trim_bytes(settings)
    encoding = settings.resolved if settings is not None else dialect.resolve_encoding(None)
    cdef bytes table = encoding.table or b""
    cdef bytes name = encoding.name.encode()
    cdef char in_separator = separator_byte(
        settings.separator.encode() if settings is not None else separator)
    if c.ps_tok_init(&tok, in_separator, block, memory_budget, c.PS_ERR_INPUT, &err):
        raise MemoryError()
    tok.budget_shares = budget_shares
    fill_dialect(&options, settings, trim, separator_byte(separator))
    if c.ps_source_init(&reading, encoding.kind, <const unsigned char *>table if table else NULL,
                        name, settings is not None, c.PS_ERR_INPUT, &err):
        c.ps_tok_release(&tok)
        raise ValueError(err.message.decode("utf-8", "replace"))
    try:
        if c.ps_tok_set_dialect(&tok, &options, &err):
            raise ValueError(err.message.decode("utf-8", "replace"))
        with open(path, "rb") as source:
            while True:
                status = c.ps_tok_next(&tok, &rec, &err)
                if status == c.PS_TOK_RECORD:
                    names = []
                    offsets = []
                    for i in range(<Py_ssize_t>rec.nfields):
                        f = &rec.fields[i]
                        scratch = <char *>malloc(f.len + 1)
                        if scratch == NULL:
                            raise MemoryError()
                        try:
                            n = c.ps_field_unescape(f, scratch)
                            names.append(scratch[:n].decode("utf-8"))
                        finally:
                            free(scratch)
                        # A quoted name starts at its opening quote (its value, once trimmed).
                        offsets.append(rec.offset + (f.data - rec.fields[0].data) - f.quoted
                                       + rec.fields[0].quoted)
                    if settings is not None and settings.trim:
                        names = [dialect.trimmed(text, settings.trim) for text in names]
                    if reading.decided and reading.kind != dialect.UTF8:
                        codec = (encoding.codec if reading.kind == dialect.TABLE
                                 else dialect.KIND_CODECS[reading.kind])
                        offsets = dialect.source_offsets(
                            path, reading.kind, codec, reading.bom_len, offsets)
                    return names, offsets, rec.line
                if status == c.PS_TOK_END:
                    raise InputError(path, "empty file (no header)", 1, 0)
                if status == c.PS_TOK_NEED_MORE:
                    if reading.failed:  # the text before the bad bytes is all read
                        c.ps_source_error(&reading, &err)
                        raise_error(&err, path, "", "", encoding, &reading)
                    chunk = source.read(block)
                    if chunk:
                        if c.ps_source_push(&reading, &tok, chunk, len(chunk), &err):
                            raise_error(&err, path, "", "", encoding, &reading)
                    elif c.ps_source_finish(&reading, &tok, &err):
                        if err.code != c.PS_ERR_DECODE:
                            raise_error(&err, path, "", "", encoding, &reading)
                    continue
                raise_error(&err, path, "", "", encoding, &reading)
    finally:
        c.ps_tok_release(&tok)
        c.ps_source_release(&reading)


def sort_order(keys):
    """The order in which the engine's in-memory sort puts these keys (a list of indices):
    by key bytes, then input order. Exposed so that tests can check the sort on its own."""
    cdef Py_ssize_t n = len(keys), i, size = 0
    cdef bytes key
    for key in keys:
        size += 8 + len(key)
    cdef char *arena = <char *>malloc(size if size else 1)
    cdef c.ps_entry *entries = <c.ps_entry *>malloc((n if n else 1) * sizeof(c.ps_entry))
    cdef uint64_t top = 0, offset
    cdef uint32_t klen, llen = 0
    cdef dict index_of = {}
    if arena == NULL or entries == NULL:
        free(arena)
        free(entries)
        raise MemoryError()
    try:
        # The records the engine builds: {u32 key length, u32 line length, key, line}.
        for i in range(n):
            key = keys[i]
            klen = len(key)
            memcpy(arena + top, &klen, 4)
            memcpy(arena + top + 4, &llen, 4)
            memcpy(arena + top + 8, <char *>key, klen)
            c.ps_entry_init(&entries[i], arena + top + 8, klen, top)
            index_of[top] = i
            top += 8 + klen
        c.ps_sort_entries(entries, n, arena)
        return [index_of[c.ps_entry_offset(&entries[i])] for i in range(n)]
    finally:
        free(arena)
        free(entries)


cdef class Cleanser:
    """One table's engine: read_from() the source (header included), finish_input(), then
    merge_step() until it returns True. close() (or garbage collection) frees everything and
    deletes any spill file left.

    Built from three values, each option of the native engine (struct ps_cleanse_options)
    taken from exactly one of their fields:

    - ``job`` (:class:`prepsync.request.TableJob`): ``source``, ``table``, ``separator`` (the
      outputs' and the baseline's), ``read_settings`` (how the source is read: encoding, its
      separator, lines to skip, values to trim), ``memory_budget`` and ``budget_shares``,
      ``baseline`` (its name, for errors) and ``read_block`` (the baseline's read size; None:
      the engine's block);
    - ``plan`` (:class:`prepsync.pipeline.ColumnPlan`): ``out_cols``, ``key_cols``,
      ``command_col``, ``baseline_key_cols``, ``change_file`` (the last row of a key wins)
      and ``replay``;
    - ``files`` (:class:`prepsync.pipeline.EngineFiles`): ``spill_dir`` and the descriptors
      ``sorted_fd``, ``nullpk_fd``, ``duplicates_fd``, ``delta_fd``, ``baseline_fd``.
    """

    cdef c.ps_cleanse *engine
    cdef c.ps_error err
    cdef readonly str source
    cdef readonly str table
    cdef readonly str baseline
    cdef object encoding

    def __cinit__(self, job, plan, files):
        cdef c.ps_cleanse_options options
        settings = job.read_settings
        cdef bytes spill = str(files.spill_dir).encode()
        cdef bytes trim = trim_bytes(settings)
        self.encoding = settings.resolved
        cdef bytes code_page = self.encoding.table or b""
        cdef bytes name = self.encoding.name.encode()
        self.source = str(job.source)
        self.table = job.table
        self.baseline = str(job.baseline or "")
        options.separator = separator_byte(settings.separator.encode())
        options.encoding = self.encoding.kind
        options.code_page = <const unsigned char *>code_page if code_page else NULL
        options.encoding_name = name
        fill_dialect(&options.dialect, settings, trim, separator_byte(job.separator.encode()))
        options.memory_budget = job.memory_budget
        options.budget_shares = job.budget_shares
        options.spill_dir = spill
        options.n_out = len(plan.out_cols)
        options.n_key = len(plan.key_cols)
        options.command_col = plan.command_col
        options.keep_last = plan.change_file
        options.replay = plan.replay
        options.nullpk_fd = files.nullpk_fd
        options.sorted_fd = files.sorted_fd
        options.duplicates_fd = files.duplicates_fd
        options.delta_fd = files.delta_fd
        options.baseline_fd = files.baseline_fd
        # A test's small read_block cuts the baseline's records at every position too.
        options.baseline_read_block = job.read_block or 0
        options.out_cols = int32_array(plan.out_cols)
        options.key_cols = NULL
        options.baseline_key_cols = NULL
        try:
            options.key_cols = int32_array(plan.key_cols)
            options.baseline_key_cols = int32_array(plan.baseline_key_cols)
            self.engine = c.ps_cleanse_new(&options, &self.err)
        finally:
            free(<void *>options.out_cols)
            free(<void *>options.key_cols)
            free(<void *>options.baseline_key_cols)
        if self.engine == NULL:
            raise_error(&self.err, self.source, self.table, self.baseline)

    cdef int check(self, int rc) except -1:
        if rc:
            raise_error(&self.err, self.source, self.table, self.baseline, self.encoding,
                        c.ps_cleanse_source(self.engine) if self.engine != NULL else NULL)
        return 0

    cdef c.ps_cleanse *live(self) except NULL:
        if self.engine == NULL:
            raise ValueError("the engine is closed")
        return self.engine

    def read_from(self, int fd, Py_ssize_t max_bytes):
        """Reads up to max_bytes from fd into the engine; returns how many (0 at the end)."""
        cdef c.ps_cleanse *engine = self.live()
        cdef size_t got = 0
        cdef int rc
        with nogil:
            rc = c.ps_cleanse_read(engine, fd, max_bytes, &got, &self.err)
        self.check(rc)
        return got

    def finish_input(self):
        cdef c.ps_cleanse *engine = self.live()
        cdef int rc
        with nogil:
            rc = c.ps_cleanse_finish_input(engine, &self.err)
        self.check(rc)

    def merge_step(self, int64_t max_rows=65536):
        """Writes up to max_rows more rows; True once every output is complete."""
        cdef c.ps_cleanse *engine = self.live()
        cdef int rc, done = 0
        with nogil:
            rc = c.ps_cleanse_merge_step(engine, max_rows, &done, &self.err)
        self.check(rc)
        return bool(done)

    def encoding_read(self):
        """What the source was read as: "UTF-8", "UTF-16 LE" (its byte-order mark, or asked
        for), a code page's name; None before its first bytes."""
        cdef const c.ps_source *reading = c.ps_cleanse_source(self.live())
        if not reading.decided:
            return None
        if reading.kind == dialect.TABLE:
            return self.encoding.name
        return ("UTF-8", "UTF-16 LE", "UTF-16 BE", "UTF-32 LE", "UTF-32 BE")[reading.kind]

    def stats(self):
        cdef const c.ps_stats *s = c.ps_cleanse_stats(self.live())
        return {
            "rows_read": s.rows_read,
            "kept": s.kept,
            "null_keys": s.null_keys,
            "duplicates": s.duplicates,
            "inserts": s.inserts,
            "updates": s.updates,
            "deletes": s.deletes,
            "merges": s.merges,
            "runs": s.runs,
            "merge_passes": s.merge_passes,
            "spill_bytes": s.spill_bytes,
            "phase_seconds": {
                name: s.phase[i].wall_ns / 1e9 for i, name in enumerate(PHASE_NAMES)
            },
            "phase_cpu_seconds": {
                name: s.phase[i].cpu_ns / 1e9 for i, name in enumerate(PHASE_NAMES)
            },
        }

    def close(self):
        if self.engine != NULL:
            c.ps_cleanse_free(self.engine)
            self.engine = NULL

    def __dealloc__(self):
        if self.engine != NULL:
            c.ps_cleanse_free(self.engine)
            self.engine = NULL
