"""bench/run.py's rounds: the orders of the jobs, the warm-up round and the budget sweep's
paired ratios; bench/compare.py on results with and without them. No tool is run."""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def import_bench(name: str) -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


run = import_bench("run")
compare = import_bench("compare")


@pytest.mark.parametrize("n", range(1, 9))
def test_every_job_runs_in_every_slot_once_every_n_rounds(n: int) -> None:
    rows = run.williams_orders(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    # From round 0 (and, for odd n, from round n: the mirror), any n rounds form a Latin square.
    for start in range(0, len(rows), n):
        square = rows[start : start + n]
        for slot in range(n):
            assert sorted(row[slot] for row in square) == list(range(n)), (start, slot)


@pytest.mark.parametrize("n", range(2, 9))
def test_each_job_follows_each_other_job_equally_often(n: int) -> None:
    rows = run.williams_orders(n)
    follows = Counter(pair for row in rows for pair in itertools.pairwise(row))
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    assert set(follows) == set(pairs)
    # Once each over the n rows of an even n; twice each over the 2n rows of an odd n.
    assert set(follows.values()) == {1 if n % 2 == 0 else 2}


def test_even_n_balances_neighbours_within_its_first_n_rounds() -> None:
    rows = run.williams_orders(4)
    assert rows[0] == [0, 1, 3, 2]
    follows = Counter(pair for row in rows[:4] for pair in itertools.pairwise(row))
    assert len(follows) == 12 and set(follows.values()) == {1}


def test_rounds_round_up_to_a_multiple_of_the_jobs() -> None:
    assert run.balanced_rounds(3, 3) == 3
    assert run.balanced_rounds(5, 3) == 6
    assert run.balanced_rounds(1, 3) == 3
    assert run.balanced_rounds(4, 2) == 4
    assert run.balanced_rounds(1, 1) == 1


def test_paired_ratio_cancels_a_slow_round() -> None:
    # Round 2 is slow for both budgets alike: the ratio of medians sees 1.10x, the rounds 1.00x.
    budget = [2.0, 2.0, 3.0, 2.2]
    reference = [2.0, 2.0, 3.0, 2.0]
    assert run.median(budget) / run.median(reference) == pytest.approx(1.05)
    assert run.paired_ratio(budget, reference) == pytest.approx(1.0)
    assert run.paired_ratio([1.1, 2.4, 3.3], [1.0, 2.0, 3.0]) == pytest.approx(1.1)
    with pytest.raises(ValueError):
        run.paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        run.paired_ratio([], [])


class FakeMeasure:
    """Stands in for run.measure: records the order of the runs and the log of each; each
    run's wall time is given by ``wall(tool, index of the run)``, and ``work(job)``, if given,
    does the run's work (writes its outputs)."""

    def __init__(self, wall: Any = lambda tool, i: 1.0) -> None:
        self.order: list[str] = []
        self.logs: list[Path] = []
        self.wall = wall
        self.work: Any = None

    def __call__(self, job: Any, log: Path) -> Any:
        self.order.append(job.tool)
        self.logs.append(log)
        if self.work is not None:
            self.work(job)
        wall = self.wall(job.tool, len(self.order) - 1)
        return run.Sample(wall, wall, 10.0, [wall] * max(1, len(job.cmds)), 0.0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMeasure:
    measure = FakeMeasure()
    monkeypatch.setattr(run, "measure", measure)
    monkeypatch.setattr(run.os, "sync", lambda: None)
    return measure


def test_run_jobs_warms_up_untimed_then_follows_the_design(
    fake: FakeMeasure, tmp_path: Path
) -> None:
    jobs = [run.Job(name, [], tmp_path / name) for name in "abc"]
    seen_after_first: list[int] = []
    run.run_jobs(jobs, 3, tmp_path, lambda: seen_after_first.append(len(fake.order)), warmup=1)
    rows = run.williams_orders(3)
    expected = [rows[-1], rows[0], rows[1], rows[2]]
    assert fake.order == ["abc"[i] for row in expected for i in row]
    assert seen_after_first == [3]  # once, after the warm-up round: every output exists
    assert all(len(job.samples) == 3 and len(job.warmup_samples) == 1 for job in jobs)
    # The timed rounds put every job in every slot once.
    timed = [fake.order[i : i + 3] for i in range(3, 12, 3)]
    assert all(sorted(r[slot] for r in timed) == ["a", "b", "c"] for slot in range(3))


def test_run_jobs_without_warmup_times_every_round(fake: FakeMeasure, tmp_path: Path) -> None:
    jobs = [run.Job(name, [], tmp_path / name) for name in "ab"]
    run.run_jobs(jobs, 1, tmp_path)
    assert fake.order == ["a", "b"]
    assert all(len(job.samples) == 1 and not job.warmup_samples for job in jobs)


def test_warmup_defaults_to_the_budget_sweep_only(tmp_path: Path) -> None:
    bench = run.Bench(run.parse_args(["--work-dir", str(tmp_path)]))
    assert bench.warmup_rounds("budget") == 1
    assert bench.warmup_rounds("complete") == 0
    assert bench.warmup_rounds("scaling-2000000") == 0
    bench = run.Bench(run.parse_args(["--work-dir", str(tmp_path), "--warmup", "0"]))
    assert bench.warmup_rounds("budget") == 0
    bench = run.Bench(run.parse_args(["--work-dir", str(tmp_path), "--warmup", "2"]))
    assert bench.warmup_rounds("complete") == 2
    with pytest.raises(SystemExit):
        run.parse_args(["--warmup", "-1"])
    with pytest.raises(SystemExit):
        run.parse_args(["--budget-sweep", ","])


def test_budget_sweep_records_both_ratios_over_balanced_rounds(
    fake: FakeMeasure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Each budget's wall times in its runs' order: the warm-up run (9.9 s, which must count
    # nowhere), then the timed rounds. 1GiB is 1.1x of the same round's 256MiB in two rounds of
    # three; its median round is not 256MiB's, so the ratio of medians says 0.88x.
    walls = {
        "prepsync@32MiB": [9.9, 2.0, 2.0, 2.0],
        "prepsync@256MiB": [9.9, 2.0, 3.0, 2.5],
        "prepsync@1GiB": [9.9, 2.2, 2.2, 3.0],
    }
    fake.wall = lambda tool, i: walls[tool][fake.order.count(tool) - 1]
    monkeypatch.setattr(run, "load_tables", lambda *args: [])
    data = tmp_path / "data"
    data.mkdir()
    args = run.parse_args(["--work-dir", str(tmp_path / "work"), "--repeat", "2"])
    bench = run.Bench(args)
    bench.budget_sweep(data, {"entries_rows": 1000}, ["32MiB", "256MiB", "1GiB"])
    fig = bench.figures
    assert bench.sweep_rounds == {"warmup": 1, "timed": 3, "design": 6}
    assert len(fake.order) == 3 * 4
    assert fig["budget.prepsync@1GiB.wall_s"]["value"] == pytest.approx(2.2)
    assert fig["budget.ratio.1GiB/256MiB.wall"]["value"] == pytest.approx(2.2 / 2.5)
    assert fig["budget.ratio.1GiB/256MiB.wall_paired"]["value"] == pytest.approx(1.1)
    assert fig["budget.ratio.32MiB/256MiB.wall"]["value"] == pytest.approx(0.8)
    assert fig["budget.ratio.32MiB/256MiB.wall_paired"]["value"] == pytest.approx(0.8)
    assert fig["budget.ratio.256MiB/256MiB.wall_paired"]["value"] == pytest.approx(1.0)
    assert {tool: len(runs) for tool, runs in bench.warmup_samples["budget"].items()} == {
        tool: 1 for tool in walls
    }
    out = capsys.readouterr().out
    assert "then 3 timed round(s) (--repeat 2 rounded up)" in out
    assert "which budget follows which balances over 6 rounds" in out
    line = next(line.split() for line in out.splitlines() if line.strip().startswith("1GiB"))
    assert line[4:6] == ["0.88x", "1.10x"]
    assert line[6:] == ["2.20", "2.20", "3.00"]


def test_compare_reads_results_with_and_without_the_paired_ratio(
    tmp_path: Path, capsys: Any
) -> None:
    def results(figures: dict[str, float]) -> Path:
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        data = {"figures": {k: {"value": v, "unit": "x"} for k, v in figures.items()}}
        path.write_text(json.dumps(data))
        return path

    old = results({"budget.ratio.1GiB/256MiB.wall": 1.09})
    new = results(
        {"budget.ratio.1GiB/256MiB.wall": 1.01, "budget.ratio.1GiB/256MiB.wall_paired": 1.0}
    )
    assert compare.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "budget.ratio.1GiB/256MiB.wall_paired" in out
    assert compare.main([str(new), str(old)]) == 0


def test_a_one_round_sweep_stays_one_round_and_says_it_is_unbalanced(
    fake: FakeMeasure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(run, "load_tables", lambda *args: [])
    data = tmp_path / "data"
    data.mkdir()
    argv = ["--work-dir", str(tmp_path / "work"), "--repeat", "1", "--warmup", "0"]
    bench = run.Bench(run.parse_args(argv))
    bench.budget_sweep(data, {}, ["256MiB", "1GiB"])
    assert fake.order == ["prepsync@256MiB", "prepsync@1GiB"]
    assert bench.sweep_rounds == {"warmup": 0, "timed": 1, "design": 2}
    assert "NOT in every slot equally often" in capsys.readouterr().out


def argument_after(cmd: list[str], option: str) -> str:
    return cmd[cmd.index(option) + 1]


def test_every_job_of_a_section_shares_one_working_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    source = data / "T.csv"
    source.write_text("k,v\n1,a\n")
    tables = [run.Table("T", source, ["k", "v"], ["k"])]
    argv = ["--work-dir", str(tmp_path / "work"), "--floor", "--page-cache", "warm,dropped"]
    argv += ["--base-prepsync-cmd", "python -P -m prepsync"]
    bench = run.Bench(run.parse_args(argv))
    work = tmp_path / "work" / "scaling-10"
    jobs = bench.cache_jobs(
        "scaling-10", bench.jobs("scaling-10", data, tables, "complete"), [source]
    )
    assert [job.tool for job in jobs] == [
        "prepsync", "prepsync-dropped", "base", "base-dropped", "sort", "sort-dropped",
        "duckdb", "duckdb-dropped", "floor",
    ]  # fmt: skip
    assert {job.work for job in jobs} == {work}
    by_tool = {job.tool: job for job in jobs}
    for tool in ("prepsync", "prepsync-dropped", "base", "base-dropped"):
        assert argument_after(by_tool[tool].cmds[0], "--working-directory") == str(work)
    for tool in ("sort", "sort-dropped"):
        assert argument_after(by_tool[tool].cmds[0], "-T") == str(work)  # its spill
        assert Path(argument_after(by_tool[tool].cmds[0], "-o")).parent == work
    for tool in ("duckdb", "duckdb-dropped"):
        spec = json.loads(Path(by_tool[tool].cmds[0][-1]).read_text())
        assert spec["work"] == str(work)  # its outputs and temp_directory
    # Each prepsync build, warm or dropped, reports to a file of its own, named in its command.
    reports = [job.report for job in jobs if job.report is not None]
    assert len(reports) == 4 and len(set(reports)) == 4
    for job in jobs:
        if job.report is not None:
            assert argument_after(job.cmds[0], "--report") == str(job.report)
            assert job.report.parent == tmp_path / "work"  # not in the emptied directory
    # The logs stay one per tool.
    assert len({f"{job.work.name}-{job.tool}.log" for job in jobs}) == len(jobs)
    # The budget sweep's budgets share their section's directory too.
    budget = run.Bench(run.parse_args(["--work-dir", str(tmp_path / "work")]))
    sweep = [budget.prepsync_job("budget", data, "complete", b, f"prepsync@{b}") for b in "ab"]
    assert {job.work for job in sweep} == {tmp_path / "work" / "budget"}


def test_runs_empty_the_shared_directory_without_removing_it(
    fake: FakeMeasure, tmp_path: Path
) -> None:
    work = tmp_path / "section"
    work.mkdir()
    (work / "left-over-from-an-earlier-bench").write_text("x")
    inode = work.stat().st_ino
    seen: list[tuple[str, int, list[str]]] = []

    def write_outputs(job: Any) -> None:
        seen.append((job.tool, job.work.stat().st_ino, sorted(os.listdir(job.work))))
        (job.work / f"{job.tool}.out").write_text(job.tool)
        (job.work / "spill").mkdir()
        (job.work / "spill" / "run-0").write_text(job.tool)

    fake.work = write_outputs
    check = tmp_path / "check" / "section"
    checked: dict[str, str] = {}

    def after_first() -> None:
        for tool in "abc":
            checked[tool] = (check / tool / f"{tool}.out").read_text()
            assert (check / tool / "spill" / "run-0").read_text() == tool

    jobs = [run.Job(name, [], work) for name in "abc"]
    run.run_jobs(jobs, 2, tmp_path, after_first, warmup=1, first_outputs=check)
    assert len(seen) == 9
    assert all(ino == inode and listing == [] for _, ino, listing in seen), seen
    # The first round's outputs, each job's, reached the checks though they share a directory.
    assert checked == {"a": "a", "b": "b", "c": "c"}
    # The last run's outputs stay until the next run (or the section's cleanup).
    last = seen[-1][0]
    assert sorted(os.listdir(work)) == [f"{last}.out", "spill"]
    assert work.stat().st_ino == inode


@pytest.mark.parametrize("keep_work", [False, True])
def test_first_round_outputs_reach_the_cross_check_and_the_baselines(
    fake: FakeMeasure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_work: bool
) -> None:
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    for day in (day1, day2):
        day.mkdir()
        (day / "T.csv").write_text("k,v\n1,a\n")
        (day / "gen.json").write_text("{}")  # gen_ad.py's mark: previous/ may be replaced
    monkeypatch.setattr(
        run,
        "load_tables",
        lambda config, connector, sources: [run.Table("T", sources / "T.csv", ["k", "v"], ["k"])],
    )
    work_root = tmp_path / "work"
    argv = ["--work-dir", str(work_root), "--repeat", "2", "--floor", "--incremental"]
    argv += ["--base-prepsync-cmd", "python -P -m prepsync"]
    bench = run.Bench(run.parse_args(argv + (["--keep-work"] if keep_work else [])))
    sorted_by = {"prepsync": "k,v\n1,a\n", "duckdb": "k,v\n1,a\n", "base": "k,v\n1,b\n"}

    def work(job: Any) -> None:
        assert list(job.work.iterdir()) == []
        if job.tool in ("prepsync", "base") and "incremental" in job.cmds[0]:
            # prepsync's baseline is the complete section's prepsync output, linked anew.
            baseline = (day2 / "previous" / "T.sorted.csv").read_text()
            (job.work / "T.sorted.delta.csv").write_text("delta from " + baseline)
        elif job.tool == "duckdb" and "incremental" in job.work.name:
            spec = json.loads(Path(job.cmds[0][-1]).read_text())
            baseline = Path(spec["tables"][0]["baseline"]).read_text()
            (job.work / "T.sorted.delta.csv").write_text("delta from " + baseline)
        elif job.tool in sorted_by:
            (job.work / "T.sorted.csv").write_text(sorted_by[job.tool])
        elif job.tool == "sort":
            (job.work / "T.sort.out").write_text("sorted lines")

    fake.work = work
    bench.complete(day1, {}, "complete")
    bench.incremental(day2, {}, "incremental")
    assert bench.checks == {
        "complete.T.sorted.csv": "identical",
        "complete.base.T.sorted.csv": "DIFFERENT",
        "incremental.T.sorted.delta.csv": "identical",
        "incremental.base.T.sorted.delta.csv": "identical",
    }
    assert (bench.baseline / "T.sorted.csv").read_text() == sorted_by["prepsync"]
    # The floor copied the bytes of prepsync's outputs, measured before the next run.
    assert bench.floor_bytes["complete"]["outputs"] == len(sorted_by["prepsync"])
    logs = {log.name for log in fake.logs}
    assert "complete-prepsync.log" in logs and "incremental-duckdb.log" in logs
    for section in ("complete", "incremental"):
        assert (work_root / section).is_dir()
        check = work_root / "check" / section
        if keep_work:  # every tool's outputs of the first round
            assert sorted(p.name for p in check.iterdir()) == sorted(
                [
                    "prepsync",
                    "base",
                    "sort",
                    "duckdb",
                    *(["floor"] if section == "complete" else []),
                ]
            )
        else:
            assert list((work_root / section).iterdir()) == []
            assert not check.exists()
