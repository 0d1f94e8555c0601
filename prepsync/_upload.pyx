# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin wrapper over the server's native reader of session files (csrc/ps_upload.c): the one
reader of what agents upload.

It hands out a file's header, then its rows in batches of (encoded key, canonical line) (a
complete load) or of (line number, values) (a delta), and turns the reader's error codes into
prepsync.errors.DataError naming the file and the line.
What a row must satisfy and how key and line are built is the C side's (see ps_upload.h).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp

from prepsync cimport _native as c

import sqlite3

from prepsync.errors import DataError

# The largest record the server takes (DESIGN: a row may be at most 64 MiB).
MAX_RECORD = 64 * 1024 * 1024


cdef class UploadReader:
    """One session file, read once from its start: :meth:`header`, then :meth:`rows` (or
    :meth:`records`)."""

    cdef c.ps_upload reader
    cdef bint opened
    cdef bint configured
    cdef readonly str name
    cdef Py_ssize_t npairs
    cdef list closed_link_rows  # link_rows as they were at close()
    cdef readonly long long rows_read  # rows handed out by copy_block()

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

    def records(self, Py_ssize_t batch_rows):
        """The next batch of at most ``batch_rows`` data records as (line, values) tuples, the
        values unquoted; [] at the end. Checked as :meth:`rows` checks (width, UTF-8, no CR
        outside quotes), but no key is built and no order required: how a delta is read (its
        commands, in file order). Needs no :meth:`configure`."""
        cdef c.ps_error err
        cdef c.ps_record rec
        cdef const c.ps_field *f
        cdef int status
        cdef Py_ssize_t i
        cdef size_t n
        cdef list batch = []
        cdef list values
        cdef char *scratch = NULL
        cdef size_t scratch_cap = 0
        cdef char *grown
        if not self.opened:
            raise ValueError("records() needs an open reader")
        try:
            while len(batch) < batch_rows:
                status = c.ps_upload_record(&self.reader, &rec, &err)
                if status == c.PS_TOK_END:
                    break
                if status != c.PS_TOK_RECORD:
                    self._raise(&err)
                values = [None] * <Py_ssize_t>rec.nfields
                for i in range(<Py_ssize_t>rec.nfields):
                    f = &rec.fields[i]
                    if not f.escaped:  # the bytes are the value as they are
                        values[i] = PyUnicode_DecodeUTF8(f.data, f.len, NULL)
                        continue
                    if f.len > scratch_cap:
                        grown = <char *>realloc(scratch, f.len)
                        if grown == NULL:
                            raise MemoryError()
                        scratch = grown
                        scratch_cap = f.len
                    n = c.ps_field_unescape(f, scratch)
                    values[i] = PyUnicode_DecodeUTF8(scratch, n, NULL)
                batch.append((rec.line, values))
        finally:
            free(scratch)
        return batch

    def check(self, Py_ssize_t max_rows):
        """Read at most ``max_rows`` rows, checking them as :meth:`rows` does, and build
        nothing; returns how many were read (0 at the end). A store that loads the file's
        bytes itself (PostgreSQL's COPY) checks the file with it first: no Python object per
        row."""
        cdef c.ps_error err
        cdef int status
        cdef Py_ssize_t read = 0
        if not self.configured or not self.opened:
            raise ValueError("check() needs an open, configured reader")
        while read < max_rows:
            status = c.ps_upload_row(&self.reader, &err)
            if status == c.PS_TOK_END:
                break
            if status != c.PS_TOK_RECORD:
                self._raise(&err)
            read += 1
        return read

    def copy_block(self, Py_ssize_t target):
        """The next rows as PostgreSQL's binary ``COPY`` data (every column text, an empty
        value NULL), about ``target`` bytes of whole rows: the first block starts with the
        format's signature, the last one ends with its trailer; b"" after that. Each row is
        checked as :meth:`rows` checks it (a bad row raises its DataError), so a store that
        loads with ``COPY ... (FORMAT binary)`` reads the file once, and PostgreSQL parses no
        CSV. :attr:`rows_read` counts the rows handed out."""
        cdef c.ps_error err
        cdef int status
        cdef int64_t rows = 0
        if not self.configured or not self.opened:
            raise ValueError("copy_block() needs an open, configured reader")
        if target < 1:
            raise ValueError("target must be at least 1")
        with nogil:
            status = c.ps_upload_copy_block(&self.reader, <size_t>target, &rows, &err)
        if status:
            self._raise(&err)
        self.rows_read += rows
        return PyBytes_FromStringAndSize(self.reader.copy, self.reader.copy_len)

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


cdef str key_line_of(const char *key, Py_ssize_t key_len):
    # The line (2 * key_len bytes at most), then the scratch for a value holding NULs (key_len).
    cdef char *out = <char *>malloc(3 * key_len + 1)
    cdef size_t n
    if out == NULL:
        raise MemoryError()
    try:
        n = c.ps_key_line(key, key_len, out + 2 * key_len, out)
        return PyUnicode_DecodeUTF8(out, n, NULL)
    finally:
        free(out)


def key_line(bytes key):
    """The stored line of a key-only row (an association-only table's: every column is a key
    column, in header order), rebuilt from its encoded key; such rows store an empty line."""
    return key_line_of(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef inline int compare_bytes(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb):
    cdef Py_ssize_t common = na if na < nb else nb
    cdef int order = memcmp(a, b, common)
    if order:
        return order
    return (na > nb) - (na < nb)


cdef object _native_store_problem = None  # why the native store reader is off, once tried
cdef bint _native_store_tried = False


def native_store_problem():
    """None when :class:`StoredRows` can read the store natively, else why not (once tried:
    SQLite is resolved from Python's own sqlite3 module, see ps_store.h)."""
    global _native_store_problem, _native_store_tried
    cdef c.ps_error err
    if not _native_store_tried:
        _native_store_tried = True
        import _sqlite3
        path = getattr(_sqlite3, "__file__", None)
        if path is None:
            _native_store_problem = "Python's sqlite3 module is built in"
        elif c.ps_store_load(path.encode(), &err):
            _native_store_problem = err.message.decode("utf-8", "replace")
    return _native_store_problem


cdef class StoredRows:
    """A table's stored rows in key order (from just above ``after``), read by C through its
    own read-only connection and read transaction: the store as last committed. For
    :class:`FullDiff`, which then makes no Python object for a stored row that is unchanged.
    A store error raises sqlite3.OperationalError, as the Python readers would."""

    cdef c.ps_store_rows rows
    cdef bint opened

    def __cinit__(self, str path, long long tid, bytes after=None):
        cdef c.ps_error err
        problem = native_store_problem()
        if problem is not None:
            raise RuntimeError(f"no native store reader: {problem}")
        encoded = path.encode()
        if after is None:
            status = c.ps_store_rows_open(&self.rows, encoded, tid, NULL, 0, &err)
        else:
            status = c.ps_store_rows_open(&self.rows, encoded, tid, after, len(after), &err)
        if status:
            raise sqlite3.OperationalError(err.message.decode("utf-8", "replace"))
        self.opened = True

    def __dealloc__(self):
        if self.opened:
            c.ps_store_rows_close(&self.rows)

    def close(self):
        """End the read transaction and close the connection."""
        if self.opened:
            c.ps_store_rows_close(&self.rows)
            self.opened = False

    cdef int next_row(self) except -1:
        """1 with rows.key/line set, 0 after the last row (the connection is then closed)."""
        cdef c.ps_error err
        if not self.opened:
            return 0
        status = c.ps_store_rows_next(&self.rows, &err)
        if status == c.PS_TOK_END:
            self.close()
            return 0
        if status != c.PS_TOK_RECORD:
            self.opened = False  # ps_store_rows_next closed it
            raise sqlite3.OperationalError(err.message.decode("utf-8", "replace"))
        return 1


cdef object _native_copy_problem = None  # why CopyRows cannot reach libpq, once tried
cdef bint _native_copy_tried = False


def native_copy_problem():
    """None when :class:`CopyRows` can read a COPY from libpq itself, else why not (once
    tried: libpq is resolved through psycopg's own module, see ps_pgcopy.h)."""
    global _native_copy_problem, _native_copy_tried
    cdef c.ps_error err
    if not _native_copy_tried:
        _native_copy_tried = True
        import sys
        from psycopg import pq

        module = sys.modules.get(pq.PGconn.__module__)
        path = getattr(module, "__file__", None)
        if path is None or not path.endswith(".so"):
            _native_copy_problem = f"psycopg's libpq binding is {pq.__impl__}, not compiled"
        elif c.ps_pgcopy_load(path.encode(), &err):
            _native_copy_problem = err.message.decode("utf-8", "replace")
    return _native_copy_problem


cdef class CopyRows:
    """A PostgreSQL table's rows from ``COPY (SELECT ... ORDER BY key) TO STDOUT (FORMAT
    binary)``, as (encoded key, canonical line) in C for :class:`FullDiff`: no Python object
    per stored row (see ps_pgcopy.h).

    ``pgconn_ptr``: the psycopg connection's ``pgconn.pgconn_ptr``, its COPY started (the
    bytes are read by libpq in C, without the GIL); or ``read``: a callable giving the stream's
    next block, empty at the end (a psycopg ``Copy.read``, or any bytes). A COPY that fails
    raises psycopg's error for its SQLSTATE; a malformed stream, or keys out of order,
    DataError naming ``name``."""

    cdef c.ps_pgcopy rows
    cdef bint opened
    cdef object read
    cdef readonly str name

    def __cinit__(self, str name, Py_ssize_t nfields, key_positions, pgconn_ptr=None,
                  read=None):
        cdef c.ps_error err
        cdef size_t *keys
        cdef Py_ssize_t index
        cdef void *conn = NULL
        self.name = name
        if (pgconn_ptr is None) == (read is None):
            raise ValueError("CopyRows reads from pgconn_ptr or from read, one of them")
        if pgconn_ptr is not None:
            problem = native_copy_problem()
            if problem is not None:
                raise RuntimeError(f"no native COPY reader: {problem}")
            conn = <void *><size_t>pgconn_ptr
        self.read = read
        positions = list(key_positions)
        keys = <size_t *>malloc((len(positions) or 1) * sizeof(size_t))
        if keys == NULL:
            raise MemoryError()
        try:
            for index in range(len(positions)):
                keys[index] = positions[index]
            if c.ps_pgcopy_open(&self.rows, conn, nfields, keys, len(positions), &err):
                raise ValueError(err.message.decode("utf-8", "replace"))
        finally:
            free(keys)
        self.opened = True

    def __dealloc__(self):
        if self.opened:
            c.ps_pgcopy_close(&self.rows)

    def close(self):
        if self.opened:
            c.ps_pgcopy_close(&self.rows)
            self.opened = False

    @property
    def rows_read(self):
        return self.rows.rows if self.opened else 0

    cdef int _raise(self, c.ps_error *err) except -1:
        message = err.message.decode("utf-8", "replace").strip()
        if err.code == c.PS_ERR_NOMEM:
            raise MemoryError(message)
        if err.code == c.PS_ERR_IO:
            import psycopg
            import psycopg.errors

            sqlstate = self.rows.sqlstate.decode("ascii", "replace")
            error_class = psycopg.OperationalError
            if sqlstate:
                try:
                    error_class = psycopg.errors.lookup(sqlstate)
                except KeyError:
                    pass
            raise error_class(message)
        raise DataError(f"{self.name}: {message}")

    cdef int _more(self) except -1:
        cdef c.ps_error err
        cdef int status
        cdef bytes block
        if self.read is None:
            with nogil:
                status = c.ps_pgcopy_fill(&self.rows, &err)
            if status:
                self._raise(&err)
            return 0
        block = bytes(self.read())
        if not block:
            c.ps_pgcopy_feed_end(&self.rows)
        elif c.ps_pgcopy_feed(&self.rows, PyBytes_AS_STRING(block), PyBytes_GET_SIZE(block),
                              &err):
            self._raise(&err)
        return 0

    cdef int next_row(self) except -1:
        """1 with rows.key/line set, 0 after the last row (and, reading from libpq, the
        COPY's result: the connection is idle in its transaction again)."""
        cdef c.ps_error err
        cdef int status
        if not self.opened:
            return 0
        while True:
            status = c.ps_pgcopy_row(&self.rows, &err)
            if status == c.PS_TOK_RECORD:
                return 1
            if status == c.PS_TOK_END:
                while not self.rows.eof:  # past the trailer: the COPY's end and result
                    self._more()
                return 0
            if status != c.PS_TOK_NEED_MORE:
                self._raise(&err)
            self._more()

    def pairs(self):
        """Every remaining row as (key, line bytes): for the tests."""
        out = []
        while self.next_row():
            out.append((PyBytes_FromStringAndSize(self.rows.key, self.rows.key_len),
                        PyBytes_FromStringAndSize(self.rows.line, self.rows.line_len)))
        return out


cdef class FullDiff:
    """The merge-join of a complete load (an :class:`UploadReader`, configured with key order
    checked) with the stored rows, in C: only changes come out, as (command, key, line,
    stored_line: str) with the caller's command objects.

    The stored rows are a :class:`StoredRows` or a :class:`CopyRows` (read by C, no Python
    object per row) or an iterable of batches of (key, line) in key order, the line as str or as its UTF-8 bytes
    (which spares decoding rows that compare equal).

    A row whose line equals the stored line costs one memcmp and no Python object. A row whose
    key is stored but whose line differs comes out as ``update`` (the caller may compare values:
    a store written before lines were canonical can quote otherwise). ``after``: upload rows
    with keys not above it are skipped (the stored rows must start above it).
    """

    cdef UploadReader reader
    cdef StoredRows native
    cdef CopyRows copied
    cdef object stored_batches
    cdef list stored
    cdef Py_ssize_t at
    cdef bint stored_done, upload_done, pending, ready
    # The stored row at hand (when ready): pointers into self.stored's objects or into
    # SQLite's row, valid until the next row is taken.
    cdef const char *skey
    cdef Py_ssize_t skey_len
    cdef const char *sline
    cdef Py_ssize_t sline_len
    cdef bytes after
    cdef object insert, update, delete
    cdef bint key_only

    def __init__(self, UploadReader reader, stored, insert, update, delete, after=None,
                 bint key_only=False):
        if not reader.configured or not reader.opened:
            raise ValueError("FullDiff needs an open, configured reader")
        self.reader = reader
        if isinstance(stored, StoredRows):
            self.native = stored
        elif isinstance(stored, CopyRows):
            self.copied = stored
        else:
            self.stored_batches = iter(stored)
        self.stored = []
        self.at = 0
        self.insert, self.update, self.delete = insert, update, delete
        self.after = after
        self.key_only = key_only

    cdef int current_stored(self) except -1:
        """1 when a stored row is at hand (skey, sline), 0 once they are all consumed."""
        cdef object key, line
        if self.ready:
            return 1
        if self.stored_done:
            return 0
        if self.native is not None:
            if not self.native.next_row():
                self.stored_done = True
                return 0
            self.skey = self.native.rows.key
            self.skey_len = <Py_ssize_t>self.native.rows.key_len
            self.sline = self.native.rows.line
            self.sline_len = <Py_ssize_t>self.native.rows.line_len
        elif self.copied is not None:
            if not self.copied.next_row():
                self.stored_done = True
                return 0
            self.skey = self.copied.rows.key
            self.skey_len = <Py_ssize_t>self.copied.rows.key_len
            self.sline = self.copied.rows.line
            self.sline_len = <Py_ssize_t>self.copied.rows.line_len
        else:
            while self.at >= len(self.stored):
                self.stored = next(self.stored_batches, [])
                self.at = 0
                if not self.stored:
                    self.stored_done = True
                    return 0
            key, line = self.stored[self.at]
            self.skey = PyBytes_AS_STRING(key)
            self.skey_len = PyBytes_GET_SIZE(key)
            if isinstance(line, bytes):
                self.sline = PyBytes_AS_STRING(line)
                self.sline_len = PyBytes_GET_SIZE(line)
            else:  # str: its UTF-8 form is cached in the object, which self.stored holds
                self.sline = PyUnicode_AsUTF8AndSize(line, &self.sline_len)
        self.ready = True
        return 1

    cdef inline void take_stored(self):
        self.ready = False
        self.at += 1

    cdef tuple stored_change(self, object command, object line):
        if self.sline_len == 0:  # a key-only row, stored without its line
            stored_line = key_line_of(self.skey, self.skey_len)
        else:
            stored_line = PyUnicode_DecodeUTF8(self.sline, self.sline_len, NULL)
        return (command, PyBytes_FromStringAndSize(self.skey, self.skey_len), line, stored_line)

    def changes(self, Py_ssize_t limit):
        """At most ``limit`` next changes; [] once both sides are consumed."""
        cdef c.ps_error err
        cdef int status, order
        cdef list out = []
        cdef c.ps_upload *u = &self.reader.reader
        cdef bint have
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
            have = self.current_stored()
            if not self.pending:
                if not have:
                    break
                out.append(self.stored_change(self.delete, None))
                self.take_stored()
                continue
            if not have:
                order = -1
            else:
                order = compare_bytes(u.key, u.key_len, self.skey, self.skey_len)
            if order < 0:
                out.append((self.insert, PyBytes_FromStringAndSize(u.key, u.key_len),
                            PyUnicode_DecodeUTF8(u.line, u.line_len, NULL), None))
                self.pending = False
            elif order > 0:
                out.append(self.stored_change(self.delete, None))
                self.take_stored()
            else:
                # Key-only rows: equal keys are equal values (and the stored line is empty).
                if not self.key_only and (self.sline_len != <Py_ssize_t>u.line_len or
                                          memcmp(self.sline, u.line, self.sline_len)):
                    out.append(self.stored_change(
                        self.update, PyUnicode_DecodeUTF8(u.line, u.line_len, NULL)))
                self.pending = False
                self.take_stored()
        return out


cdef class NativeWriter:
    """The store writer's own SQLite handle (see :func:`capture_writer`), for the bulk load of
    an initial session inside the transaction the writer opened."""

    cdef void *db
    cdef object connection

    def bulk_load(self, UploadReader reader, long long tid, long long seq, bint key_only=False):
        """Insert every remaining row of ``reader`` (open, configured, keys checked in order)
        into table ``tid`` of the writer's open transaction, in C with the GIL released;
        returns the count. ``key_only``: the rows are stored with an empty line. A bad row is the reader's DataError; a store error (interrupted,
        disk full, I/O) sqlite3.OperationalError, as from the sqlite3 module."""
        cdef c.ps_error err
        cdef int status
        cdef int64_t rows = 0
        if not reader.configured or not reader.opened:
            raise ValueError("bulk_load() needs an open, configured reader")
        # Raises ProgrammingError once the connection is closed (the handle is then gone);
        # outside a transaction the rows would be committed one by one.
        if not self.connection.in_transaction:
            raise ValueError("bulk_load() runs inside the writer's transaction")
        with nogil:
            status = c.ps_store_bulk_load(self.db, &reader.reader, tid, seq, key_only, &rows,
                                          &err)
        if status == c.PS_ERR_IO:
            raise sqlite3.OperationalError(err.message.decode("utf-8", "replace"))
        if status:
            reader._raise(&err)
        return rows


def capture_writer(connect):
    """``connect()`` (which opens one sqlite3 connection, in this thread) and that connection's
    :class:`NativeWriter`, or None where SQLite cannot be reached natively."""
    cdef c.ps_error err
    cdef void *db
    if native_store_problem() is not None or c.ps_store_capture_begin(&err):
        return connect(), None
    try:
        connection = connect()
    finally:
        db = c.ps_store_capture_end()
    if db == NULL:
        return connection, None
    writer = NativeWriter()
    writer.db = db
    writer.connection = connection
    return connection, writer
