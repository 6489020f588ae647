"""A small extract -> transform -> aggregate -> load flow.

Reads a CSV with `category` and `value` columns, or generates `rows` synthetic rows when
no input is given; drops invalid rows, converts values, aggregates per category, and
writes `rows.csv` plus `summary.json` into `output_dir`. Imports only prefect and the
standard library.
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

CATEGORIES = ("alpha", "beta", "gamma", "delta")


@task
def extract(input_path: str | None, rows: int, seed: int) -> list[dict[str, str]]:
    """Raw rows as strings, as they would come from a file."""
    if input_path:
        with Path(input_path).open(newline="") as handle:
            return list(csv.DictReader(handle))
    rng = random.Random(seed)
    data = []
    for i in range(rows):
        # Every 50th row is deliberately broken so the transform has something to drop.
        value = "n/a" if i % 50 == 49 else f"{rng.gauss(100, 15):.3f}"
        data.append({"id": str(i), "category": rng.choice(CATEGORIES), "value": value})
    return data


@task
def transform(raw: list[dict[str, str]], scale: float) -> list[dict[str, Any]]:
    """Typed, scaled rows; rows without a category or a finite number are dropped."""
    clean: list[dict[str, Any]] = []
    for row in raw:
        try:
            value = float(row.get("value", ""))
        except ValueError:
            continue
        category = (row.get("category") or "").strip().lower()
        if not category or not math.isfinite(value):
            continue
        clean.append({"id": row.get("id", ""), "category": category, "value": value * scale})
    return clean


@task
def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_category: dict[str, list[float]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row["value"])
    return {
        category: {
            "count": len(values),
            "sum": round(sum(values), 6),
            "mean": round(statistics.fmean(values), 6),
            "min": round(min(values), 6),
            "max": round(max(values), 6),
        }
        for category, values in sorted(by_category.items())
    }


@task
def load(
    rows: list[dict[str, Any]], groups: dict[str, dict[str, float]], output_dir: Path
) -> list[str]:
    output_dir.mkdir(parents=True, exist_ok=True)
    rows_path = output_dir / "rows.csv"
    with rows_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "category", "value"])
        writer.writeheader()
        writer.writerows(rows)
    summary_path = output_dir / "summary.json"
    summary_path.write_text(json.dumps(groups, indent=2, sort_keys=True) + "\n")
    return [str(rows_path), str(summary_path)]


@flow(name="etl")
def etl(
    rows: int = 1000,
    seed: int = 0,
    scale: float = 1.0,
    input_path: str | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Returns a summary: rows read and kept, per-category statistics, files written.

    Without `output_dir`, results go to a new temporary directory (never into the
    working directory, which under a worker is the code checkout).
    """
    if rows < 0:
        raise ValueError("rows must not be negative")
    logger = get_run_logger()
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="cshare-etl-"))
    raw = extract(input_path, rows, seed)
    logger.info("extracted %d rows", len(raw))
    clean = transform(raw, scale)
    logger.info("kept %d rows, dropped %d", len(clean), len(raw) - len(clean))
    groups = aggregate(clean)
    files = load(clean, groups, out)
    logger.info("wrote %s", ", ".join(files))
    return {
        "rows_in": len(raw),
        "rows_out": len(clean),
        "groups": groups,
        "output_dir": str(out),
        "files": files,
    }


if __name__ == "__main__":
    print(json.dumps(etl(rows=200), indent=2))
