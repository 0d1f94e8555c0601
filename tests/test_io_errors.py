"""A write that fails (disk full, file size limit) is one line, exit 1, and nothing left."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from sites import entity_config, prepare_command

from prepsync import _cleanse
from prepsync.config import TableSpec, Thresholds
from prepsync.errors import PrepsyncError
from prepsync.pipeline import EngineFiles, plan_columns
from prepsync.request import TableJob


@pytest.mark.parametrize(
    ("budget", "limit", "what"),
    [("1MiB", 128 << 10, "writing spill file"), ("64MiB", 1 << 20, "writing the sorted output")],
)
def test_failing_write_is_reported_and_cleaned_up(
    tmp_path: Path, budget: str, limit: int, what: str
) -> None:
    sources, working = tmp_path / "src", tmp_path / "out"
    sources.mkdir()
    rows = "".join(f"{(i * 7919) % 100_000:06d},{'v' * 20}\n" for i in range(100_000))
    (sources / "T.csv").write_text("id,v\n" + rows)
    (tmp_path / "conf.xml").write_text(entity_config("C", {"T": ("id", "v")}))

    def limit_file_size() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        prepare_command(
            tmp_path / "conf.xml",
            sources,
            working,
            "--memory-budget",
            budget,
            "--log-level",
            "Error",
        ),
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: table T: ") and done.stderr.count("\n") == 1
    assert what in done.stderr and "File too large" in done.stderr
    assert sorted(p.name for p in working.iterdir()) == [".prepsync.lock"]
    assert not (sources / "previous").exists()


def test_output_writer_thread_failure_comes_back_to_the_merge(tmp_path: Path) -> None:
    """The final merge's outputs are written by a thread: a full disk there is reported by the
    merge step that handed the buffer over, naming the file, and closing the engine joins the
    thread and frees its buffers."""
    source = tmp_path / "T.csv"
    rows = 200_000
    source.write_text(
        "id,v\n" + "".join(f"{(i * 7919) % rows:08d},value {i}\n" for i in range(rows))
    )
    with (
        open(source, "rb") as reader,
        open(os.devnull, "wb") as sink,
        open("/dev/full", "wb") as full,  # every write fails with ENOSPC
    ):
        job = TableJob(
            spec=TableSpec("T", ("id", "v"), ("id",), Thresholds()),
            source=source,
            memory_budget=4 << 20,  # a few runs, one merge: every step is the final merge's
        )
        engine = _cleanse.Cleanser(
            job,
            plan_columns(["id", "v"], job),
            EngineFiles(
                spill_dir=tmp_path,
                sorted_fd=full.fileno(),
                nullpk_fd=sink.fileno(),
                duplicates_fd=sink.fileno(),
            ),
        )
        try:
            while engine.read_from(reader.fileno(), 1 << 16):
                pass
            engine.finish_input()
            steps = 0
            with pytest.raises(PrepsyncError) as caught:
                while not engine.merge_step(1 << 16):
                    steps += 1
            # Raised mid-merge, by a step that still had rows to merge, with the thread alive.
            assert steps < rows // (1 << 16)
            assert _cleanse.live_counters()["threads"] == 1
        finally:
            engine.close()
    assert str(caught.value) == "table T: writing the sorted output: No space left on device"
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["T.csv"]  # no run file left
