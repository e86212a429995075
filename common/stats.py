"""Means with standard errors: every number bwarea reports is an `Estimate`.

An Estimate is the mean over n independent units (episodes, items) with its standard error and unit. The
standard error of a mean is the sample standard deviation (n - 1 in the denominator) divided by sqrt(n); it is
undefined (None) for a single unit. Each environment family's own metrics (envs/<family>.py, `FAMILY.metrics`)
are built from these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` units with its standard error (None when n < 2) and unit ("%", "reward", "steps")."""

    mean: float
    stderr: float | None
    n: int
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "stderr": self.stderr, "n": self.n, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Estimate":
        return cls(float(data["mean"]), None if data.get("stderr") is None else float(data["stderr"]),
                   int(data["n"]), str(data.get("unit", "")))

    def format(self, digits: int = 1) -> str:
        """'12.3 ± 4.5' (or '12.3 ± n/a' for a single unit)."""
        error = "n/a" if self.stderr is None else f"{self.stderr:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {error}"


def estimate(values: Sequence[float], unit: str = "") -> Estimate:
    """Mean and standard error of the mean of `values`."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ValueError("cannot average zero values: the metric needs at least one episode or item.")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"cannot average non-finite values ({data[~np.isfinite(data)][:3].tolist()}...).")
    stderr = float(data.std(ddof=1) / math.sqrt(data.size)) if data.size > 1 else None
    return Estimate(float(data.mean()), stderr, int(data.size), unit)


def macro_average(estimates: Sequence[Estimate], unit: str = "") -> Estimate:
    """Unweighted mean of independent estimates; standard error sqrt(sum se^2) / T (None if any is None).
    `n` is the total number of units behind it."""
    if not estimates:
        raise ValueError("a macro average needs at least one estimate.")
    errors = [e.stderr for e in estimates]
    stderr = None if any(se is None for se in errors) else math.sqrt(sum(se * se for se in errors)) / len(estimates)
    return Estimate(sum(e.mean for e in estimates) / len(estimates), stderr, sum(e.n for e in estimates),
                    unit or estimates[0].unit)


def require_fields(episodes: Sequence[Mapping[str, Any]], keys: Sequence[str], family: str) -> None:
    if not episodes:
        raise ValueError(f"{family} metrics need at least one episode.")
    for index, episode in enumerate(episodes):
        missing = [key for key in keys if key not in episode]
        if missing:
            raise ValueError(f"{family} episode #{index} lacks {', '.join(missing)}; episode records need "
                             f"{', '.join(keys)}.")
