"""Runs are capped at a cache-friendly size whatever the budget, so a table larger than one
run spills and merges even under a budget that would hold it whole. The outputs must not
depend on that: same bytes at every budget, first row per key kept, later ones duplicates."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from prepsync.config import TableSpec, Thresholds
from prepsync.pipeline import prepare_table

SPEC = TableSpec("M", ("group", "member", "note"), ("group", "member"), Thresholds())


def member_rows(count: int) -> list[tuple[str, str, str]]:
    rng = random.Random(23)
    groups = [f"CN=GRP-{n:06d},OU=Groups,OU=Sydney,DC=corp,DC=example" for n in range(3000)]
    users = [f"CN=User {n:07d},OU=Users,OU=Lyon,DC=corp,DC=example" for n in range(20000)]
    # Some 900 pairs repeat an earlier one with another note: the first one wins.
    return [(rng.choice(groups), rng.choice(users), f"n{i}") for i in range(count)]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    rows = member_rows(330_000)  # about 48 MB of records: more than one run
    folder = tmp_path_factory.mktemp("export")
    source = folder / "M.csv"
    with open(source, "w", encoding="utf-8") as out:
        out.write("group,member,note\n")
        out.writelines(f'"{g}","{m}",{n}\n' for g, m, n in rows)
    kept: dict[tuple[str, str], str] = {}
    duplicates = []
    for _, (g, m, n) in sorted(enumerate(rows), key=lambda item: (item[1][:2], item[0])):
        if (g, m) in kept:
            duplicates.append(f'"{g}","{m}",{n}\n')
        else:
            kept[(g, m)] = f'"{g}","{m}",{n}\n'
    header = "group,member,note\n"
    return (
        source,
        (header + "".join(kept.values())).encode(),
        (header + "".join(duplicates)).encode(),
    )


# At 16 MiB and 1 GiB the last run is kept in memory and merged after the spilled ones (the
# last input slice: on equal keys it comes last).
@pytest.mark.parametrize("budget", [8 << 20, 16 << 20, 1 << 30])
def test_big_tables_give_the_same_bytes_at_any_budget(
    tmp_path: Path, export: tuple[Path, bytes, bytes], budget: int
) -> None:
    source, sorted_bytes, duplicate_bytes = export
    result = prepare_table(source, SPEC, tmp_path, memory_budget=budget)
    assert result.runs >= 2  # spilled and merged, even with 1 GiB to spare
    assert result.duplicates > 500
    assert (tmp_path / "M.sorted.csv").read_bytes() == sorted_bytes
    assert (tmp_path / "M.duplicates.csv").read_bytes() == duplicate_bytes
