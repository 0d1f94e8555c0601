"""bench/gen_ad.py: the row orders of the members file, and running from a bare clone."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
GEN = BENCH / "gen_ad.py"
ROWS = 3000  # about 3,500 member rows in 500-odd groups


def generate(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(GEN), "--rows", str(ROWS), "--out", str(out), "--quiet", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def member_rows(directory: Path) -> list[tuple[str, str]]:
    with open(directory / "ADExport_members.csv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["dn", "member"]
        return [(dn, member) for dn, member in reader]


def blocks(values: list[str]) -> Counter[str]:
    """How many separate runs of equal adjacent values each value forms."""
    return Counter(v for i, v in enumerate(values) if i == 0 or values[i - 1] != v)


def adjacent_share(values: list[str]) -> float:
    return sum(a == b for a, b in itertools.pairwise(values)) / max(len(values) - 1, 1)


def test_without_numpy_one_line_names_the_requirements(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "numpy").mkdir(parents=True)
    (hidden / "numpy" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": str(hidden), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, str(GEN), "--rows", "10", "--out", str(tmp_path / "x")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "pip install -r bench/requirements.txt" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("numpy")
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for order in ("default", "clustered-dn", "clustered-member", "shuffled", "sorted"):
        args = [] if order == "default" else ["--members-order", order]
        done = generate(root / order, *args)
        assert done.returncode == 0, done.stderr
        out[order] = root / order
    return out


def test_every_members_order_holds_the_same_rows_and_entries(exports: dict[str, Path]) -> None:
    reference = Counter(member_rows(exports["clustered-dn"]))
    entries = (exports["clustered-dn"] / "ADExport_entries.csv").read_bytes()
    for order, directory in exports.items():
        assert Counter(member_rows(directory)) == reference, order
        assert (directory / "ADExport_entries.csv").read_bytes() == entries, order


def test_default_is_clustered_by_group(exports: dict[str, Path]) -> None:
    assert (exports["default"] / "ADExport_members.csv").read_bytes() == (
        exports["clustered-dn"] / "ADExport_members.csv"
    ).read_bytes()


def test_clustered_dn_keeps_each_group_together(exports: dict[str, Path]) -> None:
    rows = member_rows(exports["clustered-dn"])
    # Duplicates repeat an earlier pair later on (possibly inside another group); without
    # them every group's rows are one block.
    seen: set[tuple[str, str]] = set()
    firsts = []
    for row in rows:
        if row not in seen:
            seen.add(row)
            firsts.append(row[0])
    assert max(blocks(firsts).values()) == 1
    assert adjacent_share([dn for dn, _ in rows]) > 0.8


def test_clustered_member_keeps_each_member_together(exports: dict[str, Path]) -> None:
    rows = member_rows(exports["clustered-member"])
    assert max(blocks([m for _, m in rows]).values()) == 1
    assert adjacent_share([dn for dn, _ in rows]) < 0.05  # groups no longer together


def test_shuffled_has_no_order(exports: dict[str, Path]) -> None:
    rows = member_rows(exports["shuffled"])
    assert adjacent_share([dn for dn, _ in rows]) < 0.05
    assert adjacent_share([m for _, m in rows]) < 0.05
    assert rows != sorted(rows)


def test_sorted_is_in_key_byte_order(exports: dict[str, Path]) -> None:
    rows = member_rows(exports["sorted"])
    as_bytes = [(dn.encode(), member.encode()) for dn, member in rows]
    assert as_bytes == sorted(as_bytes)


@pytest.mark.parametrize("order", ["clustered-member", "shuffled", "sorted"])
def test_same_seed_writes_the_same_bytes(
    exports: dict[str, Path], tmp_path: Path, order: str
) -> None:
    done = generate(tmp_path / "again", "--members-order", order)
    assert done.returncode == 0, done.stderr
    for name in ("ADExport_entries.csv", "ADExport_members.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (exports[order] / name).read_bytes()
    other = generate(tmp_path / "other", "--members-order", order, "--seed", "2")
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "other" / "ADExport_members.csv").read_bytes() != (
        exports[order] / "ADExport_members.csv"
    ).read_bytes()


def test_mutate_keeps_a_sorted_members_file_sorted(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    cmd = [sys.executable, str(GEN), "--mutate", str(exports["sorted"]), "--out"]
    done = subprocess.run([*cmd, str(tmp_path / "next"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [(dn.encode(), m.encode()) for dn, m in member_rows(tmp_path / "next")]
    assert rows == sorted(rows)
    assert rows != [(dn.encode(), m.encode()) for dn, m in member_rows(exports["sorted"])]


def test_run_py_names_each_members_order(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import run
    finally:
        sys.path.remove(str(BENCH))
    assert run.members_order_of({"order": "shuffled"}) == "clustered-dn"
    assert run.members_order_of({"order": "sorted"}) == "sorted"
    assert run.members_order_of({"order": "shuffled", "members_order": "shuffled"}) == "shuffled"
    args = run.parse_args(["--members-order", "shuffled,clustered-dn", "--floor"])
    assert args.members_order == ["shuffled", "clustered-dn"]
    bench = run.Bench(run.parse_args(["--work-dir", str(tmp_path)]))
    assert bench.data_dir(5).name == "ad-5-s1-shuffled"  # old results' directory
    assert bench.data_dir(5, "clustered-dn").name == "ad-5-s1-shuffled"
    assert bench.data_dir(5, "shuffled").name == "ad-5-s1-shuffled-mshuffled"
    with pytest.raises(SystemExit):
        run.parse_args(["--members-order", "random"])


def import_run() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import run
    finally:
        sys.path.remove(str(BENCH))
    return run


def test_drop_from_cache_leaves_no_page_of_the_file(tmp_path: Path) -> None:
    run = import_run()
    path = tmp_path / "input.csv"
    path.write_bytes(b"x" * (4 << 20))
    run.warm_cache([path])
    if run.cached_bytes(path) is None:
        pytest.skip("fincore (util-linux) cannot tell what is cached here")
    assert run.cached_bytes(path) == 4 << 20
    run.drop_from_cache([path])  # dirty pages too: it flushes them first
    assert run.cached_bytes(path) == 0


def test_page_cache_modes_run_each_tool_dropped_in_the_sections_directory(tmp_path: Path) -> None:
    """A dropped run is a job of its own (its own report), at the same place on disk as the
    section's other jobs: the one working directory they share."""
    run = import_run()
    assert run.parse_args([]).page_cache == ["warm"]
    with pytest.raises(SystemExit):
        run.parse_args(["--page-cache", "cold"])
    args = run.parse_args(["--work-dir", str(tmp_path), "--page-cache", "warm,dropped"])
    bench = run.Bench(args)
    source = tmp_path / "ADExport_entries.csv"
    source.write_bytes(b"objectGUID,dn\n1,a\n")
    tables = [run.Table("ADExport_entries", source, ["objectGUID", "dn"], ["objectGUID"])]
    bench.tools = ["prepsync", "sort"]
    jobs = bench.cache_jobs(
        "scaling-9", bench.jobs("scaling-9", tmp_path, tables, "complete"), [source]
    )
    assert [j.tool for j in jobs] == ["prepsync", "prepsync-dropped", "sort", "sort-dropped"]
    assert {j.work for j in jobs} == {bench.work_dir("scaling-9")}
    assert len({j.report for j in jobs if j.report is not None}) == 2
    dropped = jobs[1]
    assert dropped.report is not None and "scaling-9-prepsync-dropped" in dropped.report.name
    cmd = dropped.cmds[0]
    assert cmd[cmd.index("--working-directory") + 1] == str(dropped.work)
    assert cmd[cmd.index("--report") + 1] == str(dropped.report)
    sort_cmd = jobs[3].cmds[0]
    assert sort_cmd[sort_cmd.index("-T") + 1] == str(jobs[3].work)
    run.warm_cache([source])
    jobs[3].setup()
    if run.cached_bytes(source) is not None:
        assert run.cached_bytes(source) == 0
    # Every run but a dropped one finds its inputs cached (run_jobs reads them first).
    assert all(j.inputs == [source] for j in jobs if not j.tool.endswith("-dropped"))


def test_every_run_records_the_kernels_counters(tmp_path: Path) -> None:
    run = import_run()
    job = run.Job("true", [["dd", "if=/dev/zero", f"of={tmp_path / 'f'}", "bs=1M", "count=8",
                            "conv=fsync", "status=none"]], tmp_path)  # fmt: skip
    sample = run.measure(job, tmp_path / "log")
    if not Path("/proc/vmstat").is_file():
        pytest.skip("no /proc/vmstat here")
    assert set(sample.vmstat) == set(run.VMSTAT)
    assert sample.vmstat["pgpgout"] >= 8 << 10  # KiB written to disk: the fsynced 8 MiB at least
    assert sample.meminfo_kib["MemFree"] > 0
