"""bench/run.py's rounds: the orders of the jobs, the warm-up round and the budget sweep's
paired ratios; bench/compare.py on results with and without them. No tool is run."""

from __future__ import annotations

import itertools
import json
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
    """Stands in for run.measure: records the order of the runs; each run's wall time is
    given by ``wall(tool, index of the run)``."""

    def __init__(self, wall: Any = lambda tool, i: 1.0) -> None:
        self.order: list[str] = []
        self.wall = wall

    def __call__(self, job: Any, log: Path) -> Any:
        self.order.append(job.tool)
        wall = self.wall(job.tool, len(self.order) - 1)
        return run.Sample(wall, wall, 10.0, [wall], 0.0)


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
