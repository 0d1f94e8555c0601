# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin wrapper over the server's native reader of complete-session files (csrc/ps_upload.c).

It hands out a file's header, then its rows in batches of (encoded key, canonical line), and
turns the reader's error codes into prepsync.errors.DataError naming the file and the line.
What a row must satisfy and how key and line are built is the C side's (see ps_upload.h).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc

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
