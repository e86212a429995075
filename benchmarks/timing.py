"""Side-by-side timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed_rounds(contenders: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    """Run each contender once per round, alternating (after one warm-up call each); return the median of
    units/s per contender, where a contender's call returns the units (tokens, steps) it processed."""
    for run in contenders.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            units = run()
            rates[name].append(units / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}
