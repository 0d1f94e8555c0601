"""``prepsync demo``: the whole chain on a bundled sample, with nothing to set up.

It copies the sample Active Directory export and its XML configuration into a temporary
folder, starts the reference server in-process on a free loopback port, runs a complete
synchronization, changes the export as a day of directory activity would (updates, deletes,
inserts), runs an incremental synchronization, and shows what the server's store holds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prepsync import pipeline
from prepsync.client import ApiClient
from prepsync.errors import PrepsyncError
from prepsync.protocol import COMPLETE, INCREMENTAL, VERDICT_STATES
from prepsync.report import summary_lines
from prepsync.request import PrepareRequest
from prepsync.sync import synchronize

SAMPLE = Path(__file__).with_name("samples") / "ad"
CONNECTOR = "AD"
CLIENT_ID, CLIENT_SECRET = "Job", "demo-secret"  # the sample config's OpenIdClient


@contextlib.contextmanager
def running_server(config: Path, data_dir: Path) -> Iterator[str]:
    """The reference server in a background thread on 127.0.0.1; yields its URL."""
    import uvicorn

    from prepsync.server import create_app

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, data_dir), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PrepsyncError("the demo server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def _next_day(export: Path) -> None:
    """Edit the entries export in place: 3 updates, 2 deletes, 2 inserts."""
    with open(export, encoding="utf-8", newline="") as source:
        rows = list(csv.reader(source))
    header, body = rows[0], rows[1:]
    department = header.index("department")
    keyed = [row for row in body if row[0]]
    for row in keyed[:3]:
        row[department] = "Research"
    gone = {row[0] for row in keyed[3:5]}
    body = [row for row in body if row[0] not in gone]
    for n in (1, 2):
        row = [""] * len(header)
        row[0] = f"00000000-0000-4000-8000-00000000000{n}"
        row[1] = f"CN=New hire {n},OU=Users,OU=Paris,DC=corp,DC=example"
        row[department] = "IT"
        body.append(row)
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows([header, *body])
    export.write_text(out.getvalue(), encoding="utf-8", newline="")


def _wait_until_processed(api: ApiClient, session_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = str(api.session(session_id)["state"])
        if state in VERDICT_STATES or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def run_demo(echo: Callable[[str], None], folder: Path | None = None) -> list[pipeline.RunResult]:
    """Run the demo in ``folder`` (a fresh temporary folder by default) and report to echo."""
    own_folder = folder is None
    root = Path(tempfile.mkdtemp(prefix="prepsync-demo-")) if folder is None else folder
    try:
        sources = root / "Temp" / "ExportOutput"
        working = root / "Work" / "Collect"
        sources.mkdir(parents=True, exist_ok=True)
        for export in SAMPLE.glob("*.csv"):
            shutil.copy(export, sources / export.name)
        config_file = root / "config.xml"
        shutil.copy(SAMPLE / "config.xml", config_file)

        runs = []
        with (
            running_server(config_file, root / "server") as url,
            ApiClient(url, CLIENT_ID, CLIENT_SECRET) as api,
        ):
            echo(f"Reference server on {url} (data in {root / 'server'})")
            for mode in (COMPLETE, INCREMENTAL):
                if mode == INCREMENTAL:
                    _next_day(sources / "ADExport_entries.csv")
                    echo("")
                    echo("The next day: 3 entries updated, 2 deleted, 2 created.")
                echo(f"== {mode} synchronization of connector {CONNECTOR}")
                request = PrepareRequest(
                    connector=CONNECTOR, mode=mode, sources_dir=sources, working_dir=working
                )
                run, delivery = synchronize(api, request, agent="demo", tables=None)
                runs.append(run)
                for line in summary_lines(run):
                    echo(line)
                state = _wait_until_processed(api, delivery.session_id)
                sent = ", ".join(receipt.name for receipt in delivery.files)
                echo(f"session {delivery.session_id}: sent {sent}; server state: {state}")

            delta = working / "ADExport_entries.sorted.delta.csv"
            echo("")
            echo(f"{delta.name}:")
            for line in delta.read_text(encoding="utf-8").splitlines():
                echo("  " + line)
            echo("")
            echo("The server's store after both sessions:")
            for table in runs[-1].tables:
                stored = api.resources(CONNECTOR, table.table)
                exported = Path(table.outputs["sorted"]).read_bytes()
                verdict = "equals" if stored == exported else "DIFFERS FROM"
                rows = len(list(csv.reader(io.StringIO(stored.decode("utf-8"))))) - 1
                echo(
                    f"  {table.table}: {rows} rows, {verdict} the export's {table.table}.sorted.csv"
                )
        return runs
    finally:
        if own_folder:
            shutil.rmtree(root, ignore_errors=True)
