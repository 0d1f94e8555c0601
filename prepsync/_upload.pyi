"""Type stubs of the server's native upload reader (prepsync/_upload.pyx)."""

import sqlite3
from collections.abc import Callable, Iterable, Sequence

MAX_RECORD: int

class UploadReader:
    name: str
    rows_read: int
    def __init__(self, path: str, name: str, separator: str) -> None: ...
    def close(self) -> None: ...
    def header(self) -> list[str]: ...
    def configure(
        self,
        key_columns: Sequence[int],
        check_order: bool,
        link_pairs: Sequence[tuple[int, int]] = ...,
    ) -> None: ...
    @property
    def link_rows(self) -> list[int]: ...
    def rows(self, batch_rows: int) -> list[tuple[bytes, str]]: ...
    def check(self, max_rows: int) -> int: ...
    def copy_block(self, target: int) -> bytes: ...
    def insert_groups(self, group_rows: int, max_groups: int) -> list[list[bytes]]: ...

def native_store_problem() -> str | None: ...

class StoredRows:
    def __init__(self, path: str, tid: int, after: bytes | None = None) -> None: ...
    def close(self) -> None: ...

def native_copy_problem() -> str | None: ...

class CopyRows:
    name: str
    def __init__(
        self,
        name: str,
        nfields: int,
        key_positions: Sequence[int],
        pgconn_ptr: int | None = None,
        read: Callable[[], bytes | bytearray | memoryview] | None = None,
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def rows_read(self) -> int: ...
    def pairs(self) -> list[tuple[bytes, bytes]]: ...

class NativeWriter:
    def bulk_load(
        self, reader: UploadReader, tid: int, seq: int, key_only: bool = False
    ) -> int: ...

def key_line(key: bytes) -> str: ...
def capture_writer(
    connect: Callable[[], sqlite3.Connection],
) -> tuple[sqlite3.Connection, NativeWriter | None]: ...

class FullDiff:
    def __init__(
        self,
        reader: UploadReader,
        stored: StoredRows
        | CopyRows
        | Iterable[list[tuple[bytes, str]]]
        | Iterable[list[tuple[bytes, bytes]]],
        insert: str,
        update: str,
        delete: str,
        after: bytes | None = None,
        key_only: bool = False,
    ) -> None: ...
    def changes(self, limit: int) -> list[tuple[str, bytes, str | None, str | None]]: ...
