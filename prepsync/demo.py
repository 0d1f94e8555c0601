"""``prepsync demo``: the whole job on a bundled sample, with nothing to set up.

It copies the sample Active Directory export and its XML configuration into a temporary
folder, runs a complete synchronization, changes the export as a day of directory activity
would (updates, deletes, inserts), and runs an incremental synchronization against the
baseline the first run left.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from prepsync import config as configuration
from prepsync import pipeline

SAMPLE = Path(__file__).with_name("samples") / "ad"
CONNECTOR = "AD"


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


def run_demo(echo: Callable[[str], None], folder: Path | None = None) -> list[pipeline.RunResult]:
    """Run the demo in ``folder`` (a fresh temporary folder by default) and report to echo."""
    from prepsync.cli import summary_lines

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
        tables = configuration.load_tables(config_file, CONNECTOR)

        runs = []
        for mode in ("complete", "incremental"):
            if mode == "incremental":
                _next_day(sources / "ADExport_entries.csv")
                echo("")
                echo("The next day: 3 entries updated, 2 deleted, 2 created.")
            echo(f"== {mode} synchronization of connector {CONNECTOR} ({root})")
            run = pipeline.prepare_connector(
                tables, sources, working, connector=CONNECTOR, mode=mode
            )
            pipeline.advance_baselines(run)
            runs.append(run)
            for line in summary_lines(run):
                echo(line)
        delta = working / "ADExport_entries.sorted.delta.csv"
        echo("")
        echo(f"{delta.name}:")
        for line in delta.read_text(encoding="utf-8").splitlines():
            echo("  " + line)
        return runs
    finally:
        if own_folder:
            shutil.rmtree(root, ignore_errors=True)
