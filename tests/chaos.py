"""The reliability harness: a model of the exports, the real server and agent as processes,
a fault-injecting TCP proxy, and the store comparison.

Shared by the in-suite fault tests, the on-demand soak (``python -m tests.soak``) and the fuzz
target. The expected state is computed here from the model's own rows (a dict and a set sorted
with ``sorted()``), never by prepsync code, so a bug in prepsync cannot hide in the yardstick.
Every process and socket it starts is bound to 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverutil import CLIENT, OPERATOR, OPERATOR_SECRET, SECRET, ServerProcess, prepare_argv

CONNECTOR = "AD"
ENTRIES, MEMBERS = "ADExport_entries", "ADExport_members"
TABLES = (ENTRIES, MEMBERS)
# Kept columns in source header order (the export has an extra column that is dropped).
KEPT = {ENTRIES: ("objectGUID", "dn", "mail"), MEMBERS: ("dn", "member")}
FINAL_STATES = frozenset({"done", "failed", "cancelled", "blocked"})
CLOCK_JUMP = Path(__file__).resolve().parent / "clockjump.py"


def config_xml() -> str:
    """The server's configuration: the AD connector's two tables, no thresholds, the agent's
    client and an operator's."""
    digest = base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()
    operator = base64.b64encode(hashlib.sha256(OPERATOR_SECRET.encode()).digest()).decode()
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:chaos">
  <EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="{ENTRIES}">
    <Property Identifier="objectGUID" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
    <Property Identifier="dn" ConnectionColumn="dn" />
    <Property Identifier="mail" ConnectionColumn="mail" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="AD_Entry_member" Connector="AD"
      ConnectionTable="{MEMBERS}" Column1="dn" Column2="member" />
  <OpenIdClient Identifier="{CLIENT}" HashedSecret="{digest}" Profile="Agent" />
  <OpenIdClient Identifier="{OPERATOR}" HashedSecret="{operator}" Profile="Administrator" />
</ConfigurationFile>
"""


# --- the model: what the exports hold, and so what the store must hold ---------------------

# Values that exercise quoting and byte order: separators, quotes, line breaks, non-ASCII,
# and shared prefixes (a prefix sorts before its extensions).
_ODD = ["", "a,b", 'say "hi"', "two\nlines", "Zoë", "日本", "a", "ab", "a b", "x;y", "tab\there"]


def _csv_field(value: str, separator: str) -> str:
    if any(c in value for c in (separator, '"', "\r", "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_text(
    header: Sequence[str], rows: Sequence[Sequence[str]], separator: str = ",", end: str = "\n"
) -> str:
    """CSV as an exporter writes it: quoted only when needed, ``end`` after every record."""
    lines = [separator.join(_csv_field(v, separator) for v in row) for row in [header, *rows]]
    return "".join(line + end for line in lines)


def _byte_key(values: Sequence[str]) -> tuple[bytes, ...]:
    # Key order: column by column, each as the bytes of its UTF-8 text; tuples of bytes
    # compare exactly so (a prefix first).
    return tuple(v.encode("utf-8") for v in values)


@dataclass
class Model:
    """A day-by-day AD export held as plain Python data: entries by objectGUID, member pairs."""

    rng: random.Random
    entries: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    serial: int = 0

    @classmethod
    def create(cls, seed: int, size: int = 200) -> Model:
        model = cls(random.Random(seed))
        for _ in range(size):
            model.insert()
        return model

    def _value(self) -> str:
        if self.rng.random() < 0.15:
            return self.rng.choice(_ODD)
        return f"v{self.rng.getrandbits(24):x}"

    def insert(self) -> None:
        self.serial += 1
        # Keys share long prefixes and some are prefixes of others ("…-7" and "…-70").
        guid = f"guid-{self.serial % 97:02d}-{self.serial}"
        dn = f"CN=User {self.serial}\\, {self.rng.choice(_ODD)},OU=Users"
        self.entries[guid] = (guid, dn, self._value())
        if self.rng.random() < 0.6:
            self.members.add((f"CN=Group {self.serial % 5},OU=Groups", dn))

    def next_day(self) -> str:
        """Mutate like a directory does from one day to the next; returns what happened."""
        roll = self.rng.random()
        if roll < 0.04 and self.entries:
            self.entries.clear()  # an emptied table (header-only export) is legal
            self.members.clear()
            return "emptied"
        if roll < 0.10 and len(self.entries) > 4:
            for guid in self.rng.sample(sorted(self.entries), len(self.entries) * 2 // 3):
                del self.entries[guid]
            return "shrunk"
        for guid in self.rng.sample(sorted(self.entries), min(len(self.entries), 6)):
            del self.entries[guid]
        for guid in self.rng.sample(sorted(self.entries), min(len(self.entries), 10)):
            guid_, dn, _mail = self.entries[guid]
            self.entries[guid] = (guid_, dn, self._value())
        for _ in range(self.rng.randint(0, 15)):
            self.insert()
        for pair in self.rng.sample(sorted(self.members), min(len(self.members), 4)):
            self.members.discard(pair)
        return "changed"

    def exports(self, separator: str = ",") -> dict[str, bytes]:
        """Each table's export: shuffled rows, an extra column, a later duplicate of a key
        and a null-key row (both set aside by cleansing), CRLF or LF line ends."""
        rows = [[g, dn, "x", mail] for g, dn, mail in self.entries.values()]
        self.rng.shuffle(rows)
        if rows:
            rows.append([rows[0][0], "CN=duplicate", "x", "dup"])  # the first occurrence wins
        rows.append(["", "CN=no key", "x", "nokey"])
        end = self.rng.choice(["\n", "\r\n"])
        entries = csv_text(["objectGUID", "dn", "extra", "mail"], rows, separator, end)
        pairs = [list(pair) for pair in self.members]
        self.rng.shuffle(pairs)
        members = csv_text(["dn", "member"], pairs, separator, end)
        return {ENTRIES: entries.encode(), MEMBERS: members.encode()}

    def snapshot(self) -> tuple[dict[str, tuple[str, str, str]], set[tuple[str, str]]]:
        return dict(self.entries), set(self.members)

    def change_exports(
        self,
        before: tuple[dict[str, tuple[str, str, str]], set[tuple[str, str]]],
        separator: str = ",",
    ) -> dict[str, bytes]:
        """Each table's changes since ``before`` as a connector's change file (a ``command``
        column first): inserts, updates and deletes in shuffled order, commands in any case and
        spelling (``merge``, Workday's ``add``), a superseded change of a key that the last one
        for it overrides, and a null-key row (both set aside by cleansing)."""
        entries, members = before
        rows: list[list[str]] = []
        for guid, row in self.entries.items():
            if guid not in entries:
                rows.append([self.rng.choice(["insert", "INSERT", "merge", "Add"]), *row])
            elif entries[guid] != row:
                rows.append([self.rng.choice(["update", "Update", "merge"]), *row])
        for guid, row in entries.items():
            if guid not in self.entries:
                rows.append([self.rng.choice(["delete", "DELETE"]), *row])
        self.rng.shuffle(rows)
        if rows and self.rng.random() < 0.5:  # an earlier change of a key: the last one wins
            rows.insert(0, [rows[0][0], rows[0][1], "CN=superseded", "old"])
        rows.append(["insert", "", "CN=no key", "nokey"])
        entry_rows = [[command, guid, dn, "x", mail] for command, guid, dn, mail in rows]
        pairs = [["insert", *pair] for pair in self.members - members]
        pairs += [["delete", *pair] for pair in members - self.members]
        self.rng.shuffle(pairs)
        end = self.rng.choice(["\n", "\r\n"])
        header = ["command", "objectGUID", "dn", "extra", "mail"]
        return {
            ENTRIES: csv_text(header, entry_rows, separator, end).encode(),
            MEMBERS: csv_text(["command", "dn", "member"], pairs, separator, end).encode(),
        }

    def expected(self) -> dict[str, list[tuple[str, ...]]]:
        """The rows the store must hold after this export was applied, in key order."""
        return {
            ENTRIES: sorted(self.entries.values(), key=lambda row: _byte_key(row[:1])),
            MEMBERS: sorted(self.members, key=_byte_key),
        }


def parse_resources(data: bytes) -> tuple[list[str], list[tuple[str, ...]]]:
    """The resources endpoint's CSV as (header, rows), parsed by the standard csv module."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    table = [tuple(row) for row in reader]
    if not table:
        return [], []
    return list(table[0]), table[1:]


@dataclass
class Comparison:
    lost: int = 0  # expected rows missing from the store (or stored with old values)
    extra: int = 0  # stored rows not expected (a deleted row kept, an old value)
    doubled: int = 0  # rows the store holds more than once

    @property
    def equal(self) -> bool:
        return self.lost == self.extra == self.doubled == 0


def compare(table: str, expected: list[tuple[str, ...]], stored: bytes) -> Comparison:
    header, rows = parse_resources(stored)
    if header and header != list(KEPT[table]):
        raise AssertionError(f"{table}: stored header {header}, expected {list(KEPT[table])}")
    want, have = Counter(expected), Counter(rows)
    result = Comparison(
        lost=sum((want - have).values()),
        extra=sum((have - want).values()),
        doubled=sum(n - 1 for n in have.values() if n > 1),
    )
    if result.equal and rows != list(expected):
        raise AssertionError(f"{table}: the store's rows are not in key order")
    return result


# --- the server: `prepsync serve` as a child process, restartable on the same port ----------


class Server(ServerProcess):
    """The real server (see :class:`serverutil.ServerProcess`) with this harness's configuration
    in ``root``; ``data`` may point elsewhere (a small file system, to fill it)."""

    def __init__(
        self,
        root: Path,
        data: Path | None = None,
        session_timeout: float = 3600,
        store_retry_delay: float | None = None,
        clock: Path | None = None,
        database: str | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.clock = clock  # a clockjump.py offset file: the server's wall clock can jump
        config = root / "server.xml"
        config.write_text(config_xml(), encoding="utf-8")
        super().__init__(
            config,
            data or root / "server-data",
            root / "server.log",
            session_timeout=session_timeout,
            store_retry_delay=store_retry_delay,
            database=database,
        )
        self.root = root

    def command(self) -> list[str]:
        command = super().command()
        if self.clock is None:
            return command
        return [command[0], str(CLOCK_JUMP), str(self.clock), *command[1:]]

    def settle(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until no committed session is still waiting or being applied."""
        deadline = time.monotonic() + timeout
        while True:
            listing = self.sessions()
            if not any(s["state"] in ("queued", "processing") for s in listing):
                return listing
            if time.monotonic() > deadline:
                states = Counter(s["state"] for s in listing)
                raise AssertionError(f"sessions not settled after {timeout} s: {dict(states)}")
            time.sleep(0.05)


# --- the agent: `prepsync prepare --api-url …` in a child process ---------------------------


class Agent:
    def __init__(
        self, root: Path, url: str, separator: str = ",", clock: Path | None = None
    ) -> None:
        self.root = root
        self.url = url
        self.separator = separator
        self.clock = clock  # a clockjump.py offset file: the agent's wall clock can jump
        self.sources = root / "Temp" / "ExportOutput"
        self.working = root / "Work" / "Collect"
        self.previous = self.sources / "previous"
        self.sources.mkdir(parents=True, exist_ok=True)

    def write_exports(self, exports: dict[str, bytes]) -> None:
        for table, data in exports.items():
            (self.sources / f"{table}.csv").write_bytes(data)

    def command(self, mode: str, *extra: str) -> list[str]:
        shifted = [] if self.clock is None else [str(CLOCK_JUMP), str(self.clock)]
        argv = prepare_argv(
            CONNECTOR,
            mode,
            "--separator",
            self.separator,
            "--memory-budget",
            "1MiB",
            "--upload-chunk-size",
            "16KiB",
            "--log-level",
            "Error",
            *extra,
            agent="chaos",
            api_url=self.url,
            client_id=CLIENT,
            temp_folder=self.root / "Temp",
            work_folder=self.root / "Work",
        )
        return [sys.executable, *shifted, "-m", "prepsync", *argv]

    def env(self, crash_at: str | None = None) -> dict[str, str]:
        env = {**os.environ, "PREPSYNC_API_SECRET": SECRET}
        env.pop("PREPSYNC_CRASH_AT", None)
        if crash_at:
            env["PREPSYNC_CRASH_AT"] = crash_at
        return env

    def run(
        self, mode: str, *extra: str, crash_at: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(mode, *extra),
            capture_output=True,
            text=True,
            env=self.env(crash_at),
            timeout=timeout,
        )

    def start(self, mode: str, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(mode, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    def baselines(self) -> dict[str, bytes]:
        if not self.previous.exists():
            return {}
        return {p.name: p.read_bytes() for p in sorted(self.previous.iterdir()) if p.is_file()}

    def leftovers(self) -> list[str]:
        """Temporary and spill files a finished run must not leave behind."""
        found = []
        for folder in (self.working, self.previous):
            if folder.exists():
                found += [
                    p.name
                    for p in folder.iterdir()
                    if ".tmp-" in p.name or p.name.startswith(".prepsync-spill-")
                ]
        return found


def assert_clean_failure(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 and exactly one line, ``error: …``, on stderr: never a traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


# --- the fault proxy: a TCP relay on 127.0.0.1 that cuts or stalls chosen requests ----------


@dataclass
class Fault:
    """What to do to the next ``times`` requests whose request line matches ``pattern``.

    Actions: ``refuse`` closes the connection before the request reaches the server;
    ``cut-request`` sends the request head and half its body, then closes both sides;
    ``lose-answer`` delivers the whole request, then closes both sides as the answer starts
    (the server did the work, the client does not know); ``stall`` holds the request for
    ``stall`` seconds, then closes.
    """

    pattern: str
    action: str
    times: int = 1
    stall: float = 0.0

    def __post_init__(self) -> None:
        assert self.action in ("refuse", "cut-request", "lose-answer", "stall"), self.action
        self._regex = re.compile(self.pattern)

    def matches(self, request_line: str) -> bool:
        return self.times > 0 and self._regex.search(request_line) is not None


class _Relay:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lose_answer = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forwards HTTP/1.1 connections from 127.0.0.1:<port> to the server, request by request
    (framed by Content-Length), applying the first matching :class:`Fault` to each request.

    ``fired`` lists ``(request line, action)`` of every fault applied, so a test can check that
    the fault it meant actually happened; ``down`` refuses every connection while set.
    """

    def __init__(self, upstream_port: int, faults: Sequence[Fault] = ()) -> None:
        self.upstream_port = upstream_port
        self.faults = list(faults)
        self.fired: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.down = False
        self._lock = threading.Lock()
        self._relays: list[_Relay] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() does not
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            relays = list(self._relays)
        for relay in relays:
            relay.close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the server is down: the client sees its connection closed
                continue
            relay = _Relay(client, upstream)
            with self._lock:
                self._relays.append(relay)
            threading.Thread(target=self._requests, args=(relay,), daemon=True).start()
            threading.Thread(target=self._answers, args=(relay,), daemon=True).start()

    def _choose(self, request_line: str) -> Fault | None:
        with self._lock:
            self.requests.append(request_line)
            for fault in self.faults:
                if fault.matches(request_line):
                    fault.times -= 1
                    self.fired.append((request_line, fault.action))
                    return fault
        return None

    def _requests(self, relay: _Relay) -> None:
        """Client to server, one request at a time."""
        buffer = b""
        try:
            while not relay.closed.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = relay.client.recv(65536)
                    if not data:
                        relay.close()
                        return
                    buffer += data
                end = buffer.index(b"\r\n\r\n") + 4
                head, buffer = buffer[:end], buffer[end:]
                lines = head.decode("latin-1").split("\r\n")
                request_line = " ".join(lines[0].split(" ")[:2])
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                }
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    relay.upstream.sendall(head + buffer)  # unframed: relay the rest as is
                    while data := relay.client.recv(65536):
                        relay.upstream.sendall(data)
                    relay.close()
                    return
                length = int(headers.get("content-length", "0"))
                fault = self._choose(request_line)
                if fault is not None and fault.action == "refuse":
                    relay.close()
                    return
                if fault is not None and fault.action == "stall":
                    relay.closed.wait(fault.stall)
                    relay.close()
                    return
                if fault is not None and fault.action == "lose-answer":
                    relay.lose_answer.set()
                relay.upstream.sendall(head)
                sendable = (
                    length // 2 if fault is not None and fault.action == "cut-request" else length
                )
                sent = 0
                while sent < sendable:
                    if not buffer:
                        buffer = relay.client.recv(65536)
                        if not buffer:
                            relay.close()
                            return
                    piece, buffer = buffer[: sendable - sent], buffer[sendable - sent :]
                    relay.upstream.sendall(piece)
                    sent += len(piece)
                if fault is not None and fault.action == "cut-request":
                    relay.close()
                    return
        except OSError:
            relay.close()

    def _answers(self, relay: _Relay) -> None:
        """Server to client, as it comes; a lost answer closes both sides instead."""
        try:
            while data := relay.upstream.recv(65536):
                if relay.lose_answer.is_set():
                    break
                relay.client.sendall(data)
        except OSError:
            pass
        relay.close()


# --- a small tmpfs, to fill a disk on purpose --------------------------------------------


class MountRefused(Exception):
    pass


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs root and CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise MountRefused("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise MountRefused(f"mount -t tmpfs refused: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` until about ``leave`` bytes stay free."""
    filler = folder / "filler"
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    # Unbuffered: a buffered file would retry its unwritten bytes at close, and fail there.
    with filler.open("ab", buffering=0) as out:
        remaining = max(0, free - leave)
        block = b"\0" * (1 << 16)
        while remaining > 0:
            try:
                written = out.write(block[: min(remaining, len(block))]) or 0
            except OSError:
                break
            remaining -= written
    return filler
