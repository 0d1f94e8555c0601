# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin wrapper over the server's native reader of complete-session files (csrc/ps_upload.c).

It hands out a file's header, then its rows in batches of (encoded key, canonical line), and
turns the reader's error codes into prepsync.errors.DataError naming the file and the line.
What a row must satisfy and how key and line are built is the C side's (see ps_upload.h).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

from prepsync cimport _native as c

from prepsync.errors import DataError

# The largest record the server takes (DESIGN: a row may be at most 64 MiB).
MAX_RECORD = 64 * 1024 * 1024


cdef class UploadReader:
    """One session file, read once from its start: :meth:`header`, then :meth:`rows`."""

    cdef c.ps_upload reader
    cdef bint opened
    cdef bint configured
    cdef readonly str name
    cdef Py_ssize_t npairs
    cdef list closed_link_rows  # link_rows as they were at close()

    def __cinit__(self, str path, str name, str separator):
        cdef c.ps_error err
        self.name = name
        encoded = separator.encode("utf-8")
        if len(encoded) != 1:
            raise ValueError("the separator is one byte")
        if c.ps_upload_open(&self.reader, path.encode(), (<char *>encoded)[0], MAX_RECORD, &err):
            self._raise(&err)
        self.opened = True

    def __dealloc__(self):
        if self.opened:
            c.ps_upload_close(&self.reader)

    def close(self):
        """Release the file and the buffers (the counts stay readable)."""
        if self.opened:
            self.closed_link_rows = self.link_rows
            c.ps_upload_close(&self.reader)
            self.opened = False

    cdef int _raise(self, c.ps_error *err) except -1:
        message = err.message.decode("utf-8", "replace")
        if err.code == c.PS_ERR_NOMEM:
            raise MemoryError(message)
        if err.line > 0:
            raise DataError(f"{self.name}, line {err.line}: {message}")
        raise DataError(f"{self.name}: {message}")

    def header(self):
        """The header's names (a file without one is an error)."""
        cdef c.ps_error err
        cdef c.ps_record rec
        cdef const c.ps_field *f
        cdef char *scratch
        cdef size_t n
        cdef Py_ssize_t i
        status = c.ps_upload_next(&self.reader, &rec, &err)
        if status == c.PS_TOK_END:
            raise DataError(f"{self.name}: empty file (no header)")
        if status != c.PS_TOK_RECORD:
            self._raise(&err)
        names = []
        for i in range(<Py_ssize_t>rec.nfields):
            f = &rec.fields[i]
            scratch = <char *>malloc(f.len + 1)
            if scratch == NULL:
                raise MemoryError()
            try:
                n = c.ps_field_unescape(f, scratch)
                names.append(PyUnicode_DecodeUTF8(scratch, n, NULL))
            finally:
                free(scratch)
        return names

    def configure(self, key_columns, bint check_order, link_pairs=()):
        """Key column positions; whether keys must ascend strictly; (column, column) pairs whose
        rows with both values non-null :attr:`link_rows` counts."""
        cdef c.ps_error err
        if not self.opened:
            raise ValueError("the reader is closed")
        cdef Py_ssize_t nkeys = len(key_columns), npairs = len(link_pairs), i
        cdef size_t *keys = <size_t *>malloc((nkeys + 1) * sizeof(size_t))
        cdef size_t *pairs = <size_t *>malloc((2 * npairs + 1) * sizeof(size_t))
        try:
            if keys == NULL or pairs == NULL:
                raise MemoryError()
            for i in range(nkeys):
                keys[i] = key_columns[i]
            for i in range(npairs):
                pairs[2 * i] = link_pairs[i][0]
                pairs[2 * i + 1] = link_pairs[i][1]
            if c.ps_upload_configure(&self.reader, keys, nkeys, check_order, pairs, npairs, &err):
                self._raise(&err)
        finally:
            free(keys)
            free(pairs)
        self.npairs = npairs
        self.configured = True

    @property
    def link_rows(self):
        """Per link pair, the rows read so far whose two values are both non-null."""
        if not self.opened:
            return list(self.closed_link_rows or [])
        if not self.configured:
            return []
        return [self.reader.pair_rows[i] for i in range(self.npairs)]

    def rows(self, Py_ssize_t batch_rows):
        """The next batch of at most ``batch_rows`` rows as (key, line) tuples; [] at the end."""
        cdef c.ps_error err
        cdef int status
        cdef list batch = []
        if not self.configured or not self.opened:
            raise ValueError("rows() needs an open, configured reader")
        while len(batch) < batch_rows:
            status = c.ps_upload_row(&self.reader, &err)
            if status == c.PS_TOK_END:
                break
            if status != c.PS_TOK_RECORD:
                self._raise(&err)
            batch.append((
                PyBytes_FromStringAndSize(self.reader.key, self.reader.key_len),
                PyUnicode_DecodeUTF8(self.reader.line, self.reader.line_len, NULL),
            ))
        return batch


    def insert_groups(self, Py_ssize_t group_rows, Py_ssize_t max_groups):
        """The next rows as the parameters of multi-row INSERTs: at most ``max_groups`` lists of
        ``2 * group_rows`` values (key, line, key, line, ...), the line as its UTF-8 bytes (the
        tokenizer checked the record is UTF-8); the last list is shorter at the end of the file;
        [] once every row is read.

        What a bulk load binds as it is: no tuple per row, no str decoded only to be encoded
        again by sqlite3's binding (that round trip was ~10 % of an initial load's CPU).
        """
        cdef c.ps_error err
        cdef int status
        cdef list groups = []
        cdef list group
        cdef Py_ssize_t filled
        if not self.configured or not self.opened:
            raise ValueError("insert_groups() needs an open, configured reader")
        if group_rows < 1 or max_groups < 1:
            raise ValueError("group_rows and max_groups must be at least 1")
        while len(groups) < max_groups:
            group = [None] * (2 * group_rows)
            filled = 0
            while filled < 2 * group_rows:
                status = c.ps_upload_row(&self.reader, &err)
                if status == c.PS_TOK_END:
                    break
                if status != c.PS_TOK_RECORD:
                    self._raise(&err)
                group[filled] = PyBytes_FromStringAndSize(self.reader.key, self.reader.key_len)
                group[filled + 1] = PyBytes_FromStringAndSize(self.reader.line, self.reader.line_len)
                filled += 2
            if filled < 2 * group_rows:
                if filled:
                    groups.append(group[:filled])
                break
            groups.append(group)
        return groups


cdef inline int compare_bytes(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb):
    cdef Py_ssize_t common = na if na < nb else nb
    cdef int order = memcmp(a, b, common)
    if order:
        return order
    return (na > nb) - (na < nb)


cdef inline str as_text(object line):
    return line.decode("utf-8") if isinstance(line, bytes) else line


cdef class FullDiff:
    """The merge-join of a complete load (an :class:`UploadReader`, configured with key order
    checked) with the stored rows (batches of (key, line) in key order; line as str or as its
    UTF-8 bytes, which spares decoding rows that compare equal), in C: only changes come out,
    as (command, key, line, stored_line: str) with the caller's command objects.

    A row whose line equals the stored line costs one memcmp and no Python object. A row whose
    key is stored but whose line differs comes out as ``update`` (the caller may compare values:
    a store written before lines were canonical can quote otherwise). ``after``: upload rows
    with keys not above it are skipped (the stored batches must start above it).
    """

    cdef UploadReader reader
    cdef object stored_batches
    cdef list stored
    cdef Py_ssize_t at
    cdef bint stored_done, upload_done, pending
    cdef bytes after
    cdef object insert, update, delete

    def __init__(self, UploadReader reader, stored_batches, insert, update, delete, after=None):
        if not reader.configured or not reader.opened:
            raise ValueError("FullDiff needs an open, configured reader")
        self.reader = reader
        self.stored_batches = iter(stored_batches)
        self.stored = []
        self.at = 0
        self.insert, self.update, self.delete = insert, update, delete
        self.after = after

    cdef object current_stored(self):
        """The stored row at hand, or None once they are all consumed."""
        while self.at >= len(self.stored):
            if self.stored_done:
                return None
            self.stored = next(self.stored_batches, [])
            self.at = 0
            if not self.stored:
                self.stored_done = True
                return None
        return self.stored[self.at]

    def changes(self, Py_ssize_t limit):
        """At most ``limit`` next changes; [] once both sides are consumed."""
        cdef c.ps_error err
        cdef int status, order
        cdef list out = []
        cdef c.ps_upload *u = &self.reader.reader
        cdef bytes stored_key
        cdef object stored
        cdef const char *stored_line
        cdef Py_ssize_t stored_len
        cdef const char *after = NULL
        cdef Py_ssize_t after_len = 0
        if self.after is not None:
            after = self.after
            after_len = len(self.after)
        while len(out) < limit:
            if not self.pending and not self.upload_done:
                status = c.ps_upload_row(u, &err)
                if status == c.PS_TOK_END:
                    self.upload_done = True
                    self.reader.close()
                elif status != c.PS_TOK_RECORD:
                    self.reader._raise(&err)
                elif after != NULL and compare_bytes(u.key, u.key_len, after, after_len) <= 0:
                    continue
                else:
                    self.pending = True
            row = self.current_stored()
            if not self.pending:
                if row is None:
                    break
                out.append((self.delete, row[0], None, as_text(row[1])))
                self.at += 1
                continue
            if row is None:
                order = -1
            else:
                stored_key = row[0]
                order = compare_bytes(u.key, u.key_len, stored_key, len(stored_key))
            if order < 0:
                out.append((self.insert, PyBytes_FromStringAndSize(u.key, u.key_len),
                            PyUnicode_DecodeUTF8(u.line, u.line_len, NULL), None))
                self.pending = False
            elif order > 0:
                out.append((self.delete, row[0], None, as_text(row[1])))
                self.at += 1
            else:
                stored = row[1]
                if isinstance(stored, bytes):
                    stored_line = PyBytes_AS_STRING(stored)
                    stored_len = PyBytes_GET_SIZE(stored)
                else:
                    stored_line = PyUnicode_AsUTF8AndSize(stored, &stored_len)
                if stored_len != <Py_ssize_t>u.line_len or memcmp(stored_line, u.line, stored_len):
                    out.append((self.update, row[0],
                                PyUnicode_DecodeUTF8(u.line, u.line_len, NULL), as_text(stored)))
                self.pending = False
                self.at += 1
        return out
