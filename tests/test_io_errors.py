"""A write that fails (disk full, file size limit) is one line, exit 1, and nothing left."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest
from sites import entity_config, prepare_command


@pytest.mark.parametrize(
    ("budget", "limit", "what"),
    [("1MiB", 256 << 10, "writing spill file"), ("64MiB", 1 << 20, "writing the sorted output")],
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
