"""Delivering a run to the server exactly once (REFERENCE §7).

The order of the steps is what makes it exactly once:

1. finish whatever an interrupted earlier run left (its local commit, then its session);
2. write the intent to open a session in the session journal
   (``<working>/.prepsync-session.json``), open it, and write its id there;
3. cleanse every table (outputs committed locally, baselines untouched), sending each table's
   file to the session while it is written (:class:`UploadWhileWriting`);
4. finish the upload, resuming where an interrupted upload stopped;
5. commit the session: from the server's 202 on, the server has the changes;
6. advance the baselines and mark the journal committed; delete it once the verdict is known.

A crash before step 5 leaves the baselines as they were, so the next run computes and sends
the same changes again (the abandoned session is cancelled). A crash between the opening and
the journal's id (the server answered, the id was never written) leaves only the intent: the
next run cancels this agent's ``open`` sessions of the connector, since an orphan would hold
every later session back until the server's session timeout (the server also cancels them
when the next session of this agent opens). A crash between steps 5 and 6
leaves a journal naming a committed session: the next run asks the server, sees it committed,
and only advances the baselines from that run's outputs - it does not send them twice. A crash
while the run waits for the verdict leaves the journal marked: the next run on the same
sources waits for that verdict too, and sends nothing.

Whether the next run then sends anything depends on its sources. The journal records, from
the intent on (so before anything can be committed), a fingerprint of the files the session is
built from (:func:`source_fingerprint`: each table's source name, size and modification time),
checked again once they are read. A rerun on the same sources is the same run: it finishes the
committed session and sends nothing (a change file carries no baseline that would make its
changes vanish from a second session: sent again, they would be applied twice). Sources that
changed since are a new run, sent in a new session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prepsync import pipeline, staging
from prepsync.config import TableSpec, resolve_tables
from prepsync.errors import PrepsyncError, ServerError, UsageError
from prepsync.exit_status import VERDICTS
from prepsync.protocol import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    FULL_MODES,
    INCREMENTAL,
    MODES,
    OPEN,
    PROCESSING,
    QUEUED,
)
from prepsync.request import DEFAULT_WAIT_TIMEOUT, PrepareRequest

if TYPE_CHECKING:
    from prepsync.client import ApiClient, FileReceipt, FileUpload

log = logging.getLogger("prepsync")

SESSION_JOURNAL = ".prepsync-session.json"
# States in which the server holds the session's files for good: it was committed.
COMMITTED_STATES = frozenset({QUEUED, PROCESSING, DONE, BLOCKED})
# Polling for the verdict: each pause is a tenth of the time the session has spent in its
# current state (at least POLL_FIRST, at most POLL_MAX). So the verdict is seen at most ~10 %
# (or 0.1 s) after it is given, whatever the session's size, and a session applied for hours
# costs a request per 5 s. (A pause doubling up to 5 s could add seconds to a ten-second apply.)
# Each request asks the server to hold it that long (?wait): the reference server answers as
# soon as the state changes, so the verdict is seen at once for the same number of requests.
POLL_FIRST, POLL_SHARE, POLL_MAX = 0.1, 0.1, 5.0


@dataclass
class Delivery:
    """What the server was sent and what it said."""

    session_id: str
    state: str  # at the commit (queued, ...), then the verdict once waited for
    files: list[FileReceipt]
    recovered_session: str | None  # a crashed run's committed session whose baselines we moved
    # The server's last answer on the session (GET /api/sessions/{id}): its state, reason and
    # counts, passed through as the server words them; None until the verdict was waited for.
    server_session: dict[str, Any] | None = None
    # Where the delivery's time went, so a slow online run names its phase: "upload" (what
    # was left to send once every table was written: the files go up while they are written),
    # "commit" (the server verifying sizes and hashes), and "verdict_wait" (from the commit's
    # answer until the verdict was seen, the server's apply included; the server's own share
    # is its session's ``apply_seconds``).
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # time.monotonic() at the commit's answer: verdict_wait counts from there (the baselines
    # advance in between); None for a delivery built elsewhere (await_verdict's start then).
    committed_at: float | None = None
    # True when this run sent nothing: an interrupted run had committed this session from the
    # same sources, and this run only finished it (advanced its baselines).
    resumed: bool = False

    @property
    def verdict(self) -> str | None:
        return self.state if self.state in VERDICTS else None

    @property
    def reason(self) -> str | None:
        reason = (self.server_session or {}).get("reason")
        return reason if isinstance(reason, str) else None

    def to_json(self) -> dict[str, object]:
        return {
            "session": self.session_id,
            "state": self.state,
            "verdict": self.verdict,
            "reason": self.reason,
            "files": [{"name": f.name, "size": f.size, "xxh3_128": f.xxh3_128} for f in self.files],
            "recovered_session": self.recovered_session,
            "resumed": self.resumed,
            "server_session": self.server_session,
            "phase_seconds": {name: round(value, 6) for name, value in self.phase_seconds.items()},
            "server_apply_seconds": (self.server_session or {}).get("apply_seconds"),
        }


class NoVerdict(PrepsyncError):
    """The session is committed (baselines advanced) but no verdict came within the wait."""

    def __init__(self, message: str, session: dict[str, Any]) -> None:
        super().__init__(message)
        self.session = session


# What to do with a journal that cannot be trusted. The session it named may be committed
# with the baselines not advanced: an incremental run would then send its changes again, a
# complete one reloads everything and is always right.
JOURNAL_ADVICE = (
    "check that no prepsync run uses this working directory, delete the file, and run a "
    "complete synchronization (an incremental one could send a committed session's changes "
    "twice)"
)


def journal_problem(data: object) -> str | None:
    """What is wrong with a session journal's content, or None when it has the shape
    :meth:`SessionJournal.write` gives it."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__} where an object belongs"
    for name in ("session", "connector", "mode", "tables"):
        if name not in data:
            return f'no "{name}"'
    session = data["session"]
    if session is not None and not (isinstance(session, str) and _plain_id(session)):
        return f'"session" is {json.dumps(session)}, not a session id or null'
    if not isinstance(data["connector"], str) or not data["connector"]:
        return f'"connector" is {json.dumps(data["connector"])}, not a name'
    if data["mode"] not in MODES:
        return f'"mode" is {json.dumps(data["mode"])}, not one of {", ".join(MODES)}'
    if data.get("agent") is not None and not isinstance(data["agent"], str):
        return f'"agent" is {json.dumps(data["agent"])}, not a name or null'
    if data.get("committed") not in (None, True, False):
        return f'"committed" is {json.dumps(data["committed"])}, not true or false'
    problem = _fingerprint_problem(data.get("sources")) or _files_problem(data.get("files"))
    if problem is not None:
        return problem
    tables = data["tables"]
    if tables is None:
        return None
    if not isinstance(tables, list):
        return f'"tables" is {json.dumps(tables)}, not a list or null'
    for index, table in enumerate(tables):
        where = f'"tables"[{index}]'
        if not isinstance(table, dict):
            return f"{where} is not an object"
        if not isinstance(table.get("table"), str) or not table["table"]:
            return f'{where} has no "table" name'
        if "sorted" not in table or not isinstance(table["sorted"], str | None):
            return f'{where} has no "sorted" path or null'
        if not isinstance(table.get("change_file"), bool):
            return f'{where} has no "change_file" true or false'
    return None


def _fingerprint_problem(sources: object) -> str | None:
    """What is wrong with a journal's "sources" (absent or null in a journal written before
    prepsync recorded them)."""
    if sources is None:
        return None
    if not isinstance(sources, dict) or not isinstance(sources.get("files"), list):
        return '"sources" is not an object with a "files" list'
    if not isinstance(sources.get("separator"), str):
        return '"sources" has no "separator"'
    if not isinstance(sources.get("command_column"), str):
        return '"sources" has no "command_column"'
    for index, item in enumerate(sources["files"]):
        where = f'"sources"["files"][{index}]'
        if not isinstance(item, dict) or not isinstance(item.get("table"), str):
            return f'{where} has no "table" name'
        if not isinstance(item.get("source"), str | None):
            return f'{where} has no "source" name or null'
        for name in ("size", "mtime_ns"):
            value = item.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return f'{where} has no "{name}" number or null'
    return None


def _files_problem(files: object) -> str | None:
    """What is wrong with a journal's "files" (the receipts of what was sent, or null)."""
    if files is None:
        return None
    if not isinstance(files, list):
        return '"files" is not a list or null'
    for index, item in enumerate(files):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("size"), int)
            and not isinstance(item.get("size"), bool)
            and isinstance(item.get("xxh3_128"), str)
        ):
            return f'"files"[{index}] is not a file\'s "name", "size" and "xxh3_128"'
    return None


def _plain_id(text: str) -> bool:
    """A session id the client can put in a URL path as it is."""
    return bool(text) and not any(c in text for c in "/\\?#%") and text not in (".", "..")


class SessionJournal:
    """The open session of the current run, on disk so a crashed run can be finished."""

    def __init__(self, working_dir: Path) -> None:
        self.path = working_dir / SESSION_JOURNAL

    def read(self) -> dict[str, Any] | None:
        """The journal, checked whole: None when there is none. Anything prepsync did not
        write (garbled, truncated by hand, another shape) is one error saying what to do,
        since a guess could send a committed session's changes twice."""
        try:
            with open(self.path, "rb") as source:
                raw = source.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise PrepsyncError(
                f"cannot read the session journal {self.path}: {error.strerror or error}"
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError is one too
            raise PrepsyncError(
                f"session journal {self.path} is garbled (not JSON: {error}); {JOURNAL_ADVICE}"
            ) from None
        problem = journal_problem(data)
        if problem is not None:
            raise PrepsyncError(
                f"session journal {self.path} is not one prepsync writes ({problem}); "
                f"{JOURNAL_ADVICE}"
            )
        checked: dict[str, Any] = data
        return checked

    def write(self, data: dict[str, Any]) -> None:
        staging.atomic_write_json(self.path, data)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _UploadStopped(Exception):
    """Raised in the sender's thread by a retry's pause once the sender is aborted."""


class UploadWhileWriting:
    """A :class:`prepsync.pipeline.Sender` that sends each table's file while the pipeline
    still writes it, on a thread of its own, so the upload hides behind the final merge
    instead of starting after the last table.

    One thread steps the uploads, a request at a time, the lowest-numbered table with a whole
    chunk ready first; a file whose table is done goes to its end. Nothing here commits: a run
    that fails after some bytes went leaves them in a session that is then cancelled.
    :meth:`finish` returns the receipts in table order once every file is sent; :meth:`abort`
    stops the thread (at once in a retry's pause, else after the request in flight).
    """

    # How often the thread looks at growing files when no table has a whole chunk ready.
    POLL_SECONDS = 0.01

    def __init__(self, api: ApiClient, session_id: str, count: int) -> None:
        self._api, self._session_id = api, session_id
        self._uploads: list[FileUpload | None] = [None] * count
        self._written = [False] * count
        self._changed = threading.Condition()
        # Set by abort(); also ends a retry's pause at once (a pause can last 30 s), so a
        # Ctrl-C reaches the session's cancel without waiting out a stalled server.
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prepsync-upload", daemon=True)
        self._thread.start()

    def writing(self, index: int, temp: Path, name: str) -> None:
        upload = self._api.file_upload(self._session_id, temp, name, pause=self._pause)
        with self._changed:
            self._uploads[index] = upload
            self._changed.notify()

    def written(self, index: int) -> None:
        with self._changed:
            self._written[index] = True
            self._changed.notify()

    def finish(self) -> list[FileReceipt]:
        """Wait until every file is sent; the receipts, in table order. Raises what the
        upload raised."""
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            receipts = []
            for upload in self._uploads:
                assert upload is not None
                receipts.append(upload.receipt())
            return receipts
        finally:
            self._close()

    def abort(self, timeout: float = 5.0) -> None:
        """Stop: at once if the thread is pausing before a retry, else after the request in
        flight (waiting at most ``timeout`` for it; the thread is a daemon)."""
        with self._changed:
            self._stopping.set()
            self._changed.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close()

    def _pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _UploadStopped

    def _close(self) -> None:
        for upload in self._uploads:
            if upload is not None:
                upload.close()

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    if self._stopping.is_set():
                        return
                    chosen = self._next()
                    if chosen is None:
                        if all(
                            upload is not None and upload.sent(written=written)
                            for upload, written in zip(self._uploads, self._written, strict=True)
                        ):
                            return
                        self._changed.wait(self.POLL_SECONDS)
                        continue
                    upload, written = chosen
                upload.step(written=written)  # the request goes out with the lock released
        except _UploadStopped:
            pass
        except BaseException as error:  # reported by finish()
            self._error = error

    def _next(self) -> tuple[FileUpload, bool] | None:
        for upload, written in zip(self._uploads, self._written, strict=True):
            if upload is not None and upload.ready(written=written):
                return upload, written
        return None


def files_to_send(run: pipeline.RunResult) -> list[Path]:
    """The ``.sorted.csv`` of each table (initial/complete) or its delta (incremental)."""
    kind = pipeline.sent_kind(run.request.mode)
    return [Path(table.outputs[kind]) for table in run.tables]


def _run_from_journal(entry: dict[str, Any], sources: Path, working: Path) -> pipeline.RunResult:
    tables = [
        pipeline.TableResult(
            table=t["table"],
            source="",
            change_file=t["change_file"],
            outputs={"sorted": t["sorted"]} if t["sorted"] else {},
        )
        for t in entry["tables"]
    ]
    request = PrepareRequest(
        connector=entry["connector"], mode=entry["mode"], sources_dir=sources, working_dir=working
    )
    return pipeline.RunResult(request=request, tables=tables, seconds=0.0, peak_rss=0)


def source_fingerprint(request: PrepareRequest, tables: Sequence[TableSpec]) -> Any:
    """What identifies the sources a run is built from, cheaply: each table's source file
    (the name :func:`prepsync.pipeline.find_source` picks), its size and its modification time
    in nanoseconds, with the separator and command column that read them. A source that cannot
    be found has no size: such a fingerprint never matches (the run itself reports why)."""
    files: list[dict[str, Any]] = []
    for spec in tables:
        try:
            source = pipeline.find_source(request.sources_dir, spec.name)
            status = source.stat()
        except (PrepsyncError, OSError):
            files.append({"table": spec.name, "source": None, "size": None, "mtime_ns": None})
            continue
        files.append(
            {
                "table": spec.name,
                "source": source.name,
                "size": status.st_size,
                "mtime_ns": status.st_mtime_ns,
            }
        )
    return {
        "separator": request.separator,
        "command_column": request.command_column,
        "files": files,
    }


def same_sources(entry: dict[str, Any], fingerprint: Any, mode: str) -> bool:
    """Whether a run in ``mode`` on sources of ``fingerprint`` is the run that wrote the
    journal ``entry``: then the session the journal names holds its changes already.

    A complete or initial run after an incremental session is another run even on the same
    files: it reloads everything, which is harmless to send again and what it was asked for."""
    recorded = entry.get("sources")
    if recorded is None or recorded != fingerprint:
        return False
    if any(item["size"] is None for item in fingerprint["files"]):
        return False
    return not (mode in FULL_MODES and entry["mode"] == INCREMENTAL)


@dataclass
class Settled:
    """The committed session of an interrupted run: its baselines are advanced, and its
    journal (marked ``committed``) is still there for the caller to keep or remove."""

    session_id: str
    state: str
    entry: dict[str, Any]
    journal: SessionJournal

    def receipts(self) -> list[FileReceipt]:
        from prepsync.client import FileReceipt

        files = self.entry.get("files") or []
        return [FileReceipt(f["name"], f["size"], f["xxh3_128"]) for f in files]


def settle_interrupted(api: ApiClient, sources: Path, working: Path) -> Settled | None:
    """Settle the session a crashed run left. Returns it if it had been committed (its
    baselines then advanced, its journal kept and marked); else the journal is gone, with
    a session still open cancelled, and None."""
    journal = SessionJournal(working)
    entry = journal.read()
    if entry is None:
        return None
    session_id = entry["session"]
    if session_id is None:  # killed while opening: the session, if any, is an orphan
        try:
            _cancel_orphans(api, entry["connector"], entry.get("agent"))
        except ServerError as error:
            if error.status not in (403, 404):
                raise
            # The connector is gone or closed to us: nothing of ours can be cancelled there.
            log.warning("could not look for sessions left open by an interrupted run: %s", error)
        journal.remove()
        return None
    try:
        state = api.session(session_id)["state"]
    except ServerError as error:
        if error.status != 404:
            raise
        state = "unknown"  # e.g. the server's data was reset: nothing of it is applied
    # A journal marked committed was seen committed by an earlier rerun, which advanced its
    # baselines: failed or cancelled now is that committed session's verdict, not a sign that
    # it never arrived.
    marked = entry.get("committed") is True
    # The server fails only a committed session (the verdict on what it could not apply), so
    # failed means committed even unmarked: sending the same changes again would only repeat
    # that verdict in a new session. Cancelled can mean never committed (an uploaded session
    # the crash left open is abandoned), so unmarked it sends again.
    settled_states = COMMITTED_STATES | {FAILED} | ({CANCELLED} if marked else frozenset())
    if state in settled_states and entry["tables"] is not None:
        if not marked:
            log.warning(
                "session %s of an interrupted run was committed (%s): advancing its baselines",
                session_id,
                state,
            )
            pipeline.advance_baselines(_run_from_journal(entry, sources, working))
            entry = {**entry, "committed": True}
            journal.write(entry)
        return Settled(str(session_id), str(state), entry, journal)
    if state == OPEN:
        log.warning("cancelling session %s left open by an interrupted run", session_id)
        api.cancel(session_id)
    # cancelled or unknown: nothing of it was applied; this run sends the changes again.
    journal.remove()
    return None


def finish_interrupted(api: ApiClient, sources: Path, working: Path) -> str | None:
    """Settle the session a crashed run left and forget it; returns its id if it had been
    committed (its baselines are then advanced)."""
    settled = settle_interrupted(api, sources, working)
    if settled is None:
        return None
    settled.journal.remove()
    return settled.session_id


def _cancel_orphans(api: ApiClient, connector: str, agent: str | None) -> None:
    """Cancel this agent's (and client's) ``open`` sessions of the connector."""
    for session in api.sessions(connector):
        if (
            session.get("state") != OPEN
            or session.get("agent") != agent
            or session.get("client") not in (None, api.client_id)
        ):
            continue
        log.warning("cancelling session %s left open by an interrupted run", session["id"])
        try:
            api.cancel(str(session["id"]))
        except ServerError as error:
            if error.status != 409:  # 409: it was settled meanwhile (abandoned, superseded)
                raise


def synchronize(
    api: ApiClient,
    request: PrepareRequest,
    *,
    agent: str,
    tables: Sequence[TableSpec] | None,
    progress: pipeline.Progress | None = None,
) -> tuple[pipeline.RunResult, Delivery]:
    """An online run: prepare every table and deliver the result to the server exactly once,
    under one hold of the working directory's lock (the offline twin is
    :func:`prepsync.pipeline.run_offline`). ``tables`` None: the server's mappings."""
    connector, mode = request.connector, request.mode
    journal = SessionJournal(request.working_dir)
    with staging.working_lock(request.working_dir):
        if tables is None:
            tables = resolve_tables(
                api.mappings(connector), source=f"server mappings of {connector}"
            )
        # Taken before anything is read, and in the journal from the intent on: so it is on
        # disk before the session can be committed, whenever this run is killed.
        fingerprint = source_fingerprint(request, tables)
        settled = settle_interrupted(api, request.sources_dir, request.working_dir)
        recovered = None
        if settled is not None:
            if same_sources(settled.entry, fingerprint, mode):
                # The same run again (a scheduler's rerun): its session holds the changes.
                # The journal stays, so a rerun of this rerun sends nothing either.
                log.warning(
                    "session %s (%s) of an interrupted run was committed from these same "
                    "sources: nothing is sent again",
                    settled.session_id,
                    settled.state,
                )
                # What a killed run left (under the lock, once recovered: nothing needs it).
                staging.remove_leftovers(request.working_dir, request.baseline_dir)
                run = _run_from_journal(settled.entry, request.sources_dir, request.working_dir)
                return run, Delivery(
                    settled.session_id,
                    settled.state,
                    settled.receipts(),
                    settled.session_id,
                    resumed=True,
                )
            settled.journal.remove()  # other sources: a new run
            recovered = settled.session_id
        intent = {
            "session": None,
            "connector": connector,
            "agent": agent,
            "mode": mode,
            "sources": fingerprint,
        }
        journal.write({**intent, "tables": None})
        try:
            session_id = api.open_session(connector, agent, mode, request.separator)
        except ServerError as error:
            if error.status is not None:  # refused: no session was opened
                journal.remove()
            raise  # else: gave up retrying; a post may have opened one, the intent stays
        log.info("opened session %s (%s)", session_id, mode)
        staging.crash_point("session-opened")
        journal.write({**intent, "session": session_id, "tables": None})
        committing = False
        sender = UploadWhileWriting(api, session_id, len(tables))
        try:
            run = pipeline.prepare_connector(tables, request, progress=progress, sender=sender)
            prepared = time.monotonic()
            _check_unchanged(fingerprint, source_fingerprint(request, tables))
            receipts = sender.finish()
            delivered = {
                **intent,
                "session": session_id,
                "tables": [
                    {
                        "table": t.table,
                        "sorted": t.outputs.get("sorted"),
                        "change_file": t.change_file,
                    }
                    for t in run.tables
                ],
                "files": [
                    {"name": r.name, "size": r.size, "xxh3_128": r.xxh3_128} for r in receipts
                ],
            }
            journal.write(delivered)
            staging.crash_point("uploaded")
            committing = True
            upload_seconds = time.monotonic() - prepared  # what is left once the run is done
            state = api.commit(session_id, receipts)["state"]
            committed_at = time.monotonic()
            commit_seconds = committed_at - prepared - upload_seconds
            staging.crash_point("server-committed")
        except BaseException:
            if not committing:
                sender.abort()
                _abandon(api, journal, session_id)
            # else: whether the commit reached the server is unknown; the journal stays and
            # the next run asks the server before doing anything.
            raise
        pipeline.advance_baselines(run)
        # Kept, marked committed, until the caller knows the verdict (forget_delivered): a run
        # killed while it waits leaves it, so a rerun on the same sources waits for this
        # session instead of sending its changes again (a change file would be applied twice).
        journal.write({**delivered, "committed": True})
        staging.crash_point("baselines-advanced")
        log.info("session %s committed (%s); baselines advanced", session_id, state)
    phases = {"upload": upload_seconds, "commit": commit_seconds}
    delivery = Delivery(
        session_id, state, receipts, recovered, phase_seconds=phases, committed_at=committed_at
    )
    return run, delivery


def forget_delivered(working: Path, session_id: str) -> None:
    """The verdict of session ``session_id``, which this run delivered, is known: its journal
    has served (a rerun on the same sources is then a new run, as any run after a finished
    one). Left alone when another run holds the working directory: that run settles it."""
    try:
        with staging.working_lock(working):
            journal = SessionJournal(working)
            entry = journal.read()
            if entry is not None and entry.get("session") == session_id:
                journal.remove()
    except UsageError:
        log.debug("another run holds %s: it settles the session journal", working)


def _check_unchanged(before: Any, after: Any) -> None:
    """Refuse to commit what was read from sources that changed meanwhile (an export still
    being written): the journal's fingerprint would not describe what the session holds."""
    for old, new in zip(before["files"], after["files"], strict=True):
        if old != new:
            raise PrepsyncError(
                f"table {old['table']}: its source {old['source'] or new['source']} changed "
                "while it was read; nothing was committed: run again once the export is complete"
            )


def _abandon(api: ApiClient, journal: SessionJournal, session_id: str) -> None:
    """Best effort: cancel the session now; if the server can't be told, the journal stays
    and the next run cancels it."""
    try:
        api.cancel(session_id)
    except (ServerError, OSError) as error:
        log.warning("could not cancel session %s now (%s); the next run will", session_id, error)
        return
    journal.remove()


def await_verdict(
    api: ApiClient,
    delivery: Delivery,
    *,
    timeout: float = DEFAULT_WAIT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Delivery:
    """Poll the committed session until the server settles it (done, blocked, failed,
    cancelled); returns the delivery with the verdict and the server's answer.

    ``progress(text)`` is told the state while the session is queued or processing, and
    which earlier session holds a queued one back. Raises :class:`NoVerdict` once ``timeout``
    seconds pass without a verdict, and ServerError (the commit and the baselines stand) when
    the server cannot be asked.
    """
    session_id = delivery.session_id
    started = clock()
    since_commit = started if delivery.committed_at is None else delivery.committed_at
    state_since = started  # when the session was first seen in last_state
    last_state = None
    wait = 0.0  # what the next request asks the server to hold it for (the pause we'd make)
    while True:
        asked = clock()
        try:
            document = api.session(session_id, wait=wait)
            held = clock() - asked  # before any other request below
        except ServerError as error:
            raise ServerError(
                f"session {session_id} is committed (baselines advanced), but its verdict "
                f"could not be read: {error}",
                status=error.status,
            ) from None
        state = str(document.get("state"))
        if state in VERDICTS:
            delivery.state, delivery.server_session = state, document
            delivery.phase_seconds["verdict_wait"] = clock() - since_commit
            return delivery
        waited = clock() - started
        holder = _held_behind(api, document) if state == QUEUED else None
        if progress is not None:
            behind = f" behind {holder['state']} session {holder['id']}" if holder else ""
            progress(f"session {session_id}: {state}{behind} ({waited:.0f} s)")
        if waited >= timeout:
            behind = ""
            if holder is not None:
                behind = f" behind {holder['state']} session {holder['id']}"
                if holder.get("reason"):
                    behind += f" ({holder['reason']})"
            delivery.state, delivery.server_session = state, document
            delivery.phase_seconds["verdict_wait"] = clock() - since_commit
            raise NoVerdict(
                f"session {session_id} is still {state}{behind} after {waited:.0f} s; it is "
                "committed and the baselines advanced: the server will settle it",
                document,
            )
        now = clock()
        changed = state != last_state
        if changed:  # queued -> processing: look again soon
            state_since, last_state = now, state
        delay = min(max((now - state_since) * POLL_SHARE, POLL_FIRST), POLL_MAX)
        delay = min(delay, max(timeout - waited, 0.0))
        # A server that held the request (?wait) already paused for us; one that answered at
        # once (it does not know wait) did not, unless the state changed: then ask again now.
        if not changed and held < wait / 2:
            sleep(delay)
        wait = delay


def _held_behind(api: ApiClient, session: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier unsettled session of the connector that a queued one waits for (the
    oldest one still open, blocked or processing), or None; best effort, for the message."""
    connector = session.get("connector")
    if not isinstance(connector, str):
        return None
    try:
        listing = api.sessions(connector)  # newest first
    except ServerError:
        return None
    ids = [item.get("id") for item in listing]
    if session.get("id") not in ids:
        return None
    earlier = listing[ids.index(session.get("id")) + 1 :]
    holders = [s for s in earlier if s.get("state") in (OPEN, BLOCKED, PROCESSING)]
    return holders[-1] if holders else None
