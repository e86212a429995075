"""Reading the CSV logs of training runs (runs/<name>/logs/csv/version_*/metrics.csv), for plots, the viewer,
benchmarks and tests; no Lightning needed."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path


def read_metrics(run_path: str | os.PathLike) -> list[dict[str, float]]:
    """All CSV rows logged by a run, oldest invocation first, numbers as floats (empty cells dropped).

    When a run was resumed, rows of an earlier invocation at or after the step the next one resumed
    from are dropped (that invocation was cut off and its later steps were redone).
    """
    versions = sorted((Path(run_path) / "logs" / "csv").glob("version_*/metrics.csv"),
                      key=lambda path: int(path.parent.name.split("_")[1]))
    runs = []
    for path in versions:
        with path.open(newline="") as handle:
            rows = [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in csv.DictReader(handle)]
        runs.append(rows)
    merged: list[dict[str, float]] = []
    for index, rows in enumerate(runs):
        later = [row["step"] for following in runs[index + 1:] for row in following if "step" in row]
        cutoff = min(later) if later else math.inf
        merged += [row for row in rows if row.get("step", -1) < cutoff]
    return merged
