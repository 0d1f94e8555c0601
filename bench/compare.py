#!/usr/bin/env python3
"""Compare two ``bench/run.py`` (or two ``bench/server_bench.py``) results:
``python bench/compare.py OLD.json NEW.json``.

Prints every figure of either file side by side and flags each one that got more than
``--threshold`` percent (default 10) worse. Every figure is lower-is-better: wall and CPU
seconds, microseconds per row, peak RSS, prepsync's per-phase seconds, and the ratios (a
time in seconds must also have grown by ``--min-seconds``, default 0.05). An output check
(prepsync vs DuckDB) that was identical and is now different or missing is flagged too. Exits 1 when
anything is flagged, 0 otherwise (2 on unreadable input).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load(path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"error: cannot read {path}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    if not isinstance(data.get("figures"), dict):
        print(f"error: {path} has no figures (not a bench/run.py result?)", file=sys.stderr)
        raise SystemExit(2)
    return normalized(data)


def normalized(data: dict[str, Any]) -> dict[str, Any]:
    """server_bench.py's shape in run.py's: its figures are bare numbers (seconds when the name
    ends in ``_s``, else ratios), its checks a list of per-round, per-table outcomes."""
    data["figures"] = {
        name: fig
        if isinstance(fig, dict)
        else {"value": fig, "unit": "s" if name.endswith("_s") else "x"}
        for name, fig in data["figures"].items()
    }
    checks = data.get("checks", {})
    if isinstance(checks, list):
        different = [check for check in checks if check != "identical"]
        data["checks"] = {"stored rows vs sent files": different[0] if different else "identical"}
    return data


def value(fig: dict[str, Any] | None) -> float | None:
    if not fig:
        return None
    v = fig.get("value")
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "MiB":
        return f"{v:.1f} {unit}"
    if unit == "x":
        return f"{v:.3f}{unit}"
    return f"{v:.3f} {unit}"


def context_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences that make the figures not comparable (data, parameters, machine)."""
    notes = []
    for what in ("parameters", "machine"):
        a, b = old.get(what, {}), new.get(what, {})
        for key in sorted(set(a) | set(b)):
            if key in ("prepsync_cmd", "base_prepsync_cmd", "config") or a.get(key) == b.get(key):
                continue
            notes.append(f"{what}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    da, db = old.get("datasets", {}), new.get("datasets", {})
    for section in sorted(set(da) & set(db)):
        for key in ("entries_rows", "members_rows", "entries_bytes", "seed", "order"):
            if da[section].get(key) != db[section].get(key):
                notes.append(
                    f"datasets.{section}.{key}: {da[section].get(key)!r} -> "
                    f"{db[section].get(key)!r}"
                )
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=10.0, help="percent (default 10)")
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=0.05,
        help="a time in seconds is not flagged unless it grew by at least this much "
        "(default 0.05: the noise of a short phase on a shared machine)",
    )
    args = ap.parse_args(argv)
    old, new = load(args.old), load(args.new)
    of, nf = old["figures"], new["figures"]
    names = list(of) + [n for n in nf if n not in of]

    print(f"old: {args.old}  ({old.get('date', '?')}, {old.get('git', {}).get('commit', '?')})")
    print(f"new: {args.new}  ({new.get('date', '?')}, {new.get('git', {}).get('commit', '?')})")
    for note in context_differences(old, new):
        print(f"  note: {note}")
    width = max([len(n) for n in names] + [6])
    print(f"{'figure':<{width}}  {'old':>14}  {'new':>14}  {'change':>8}")
    flagged = []
    for name in names:
        unit = (nf.get(name) or of.get(name) or {}).get("unit", "")
        a, b = value(of.get(name)), value(nf.get(name))
        change = ""
        mark = ""
        if a is not None and b is not None:
            small = unit == "s" and b - a < args.min_seconds
            if a > 0:
                pct = (b - a) / a * 100
                change = f"{pct:+.1f}%"
                if pct > args.threshold and not small:
                    mark = "  WORSE"
                    flagged.append(name)
            elif b > a and not small:
                change, mark = "new>0", "  WORSE"
                flagged.append(name)
        print(f"{name:<{width}}  {fmt(a, unit):>14}  {fmt(b, unit):>14}  {change:>8}{mark}")
    for key in sorted(set(old.get("checks", {})) | set(new.get("checks", {}))):
        a_check = old.get("checks", {}).get(key, "-")
        b_check = new.get("checks", {}).get(key, "-")
        mark = ""
        if a_check == "identical" and b_check not in ("identical", "-"):
            mark = "  WORSE"
            flagged.append(f"check {key}")
        print(f"check {key}: {a_check} -> {b_check}{mark}")
    if flagged:
        print(f"\n{len(flagged)} figure(s) more than {args.threshold:g}% worse:")
        for name in flagged:
            print(f"  {name}")
        return 1
    print(f"\nno figure more than {args.threshold:g}% worse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
