"""Report arithmetic for `bwarea evaluate`: means with standard errors, and each benchmark's own metric.

Every number is an `Estimate`: the mean over n independent units (episodes, items) with its standard
error and unit. The standard error of a mean is the sample standard deviation (n - 1 in the
denominator) divided by sqrt(n); it is undefined (None) for a single unit.

Metric names carry their benchmark, so they cannot be mixed up with other benchmarks' numbers:

- TextWorld: `textworld_normalised_score` (mean over episodes of 100 * score / max_score, %) and
  `textworld_success_rate` (% of episodes won).
- Crafter: `crafter_score` — the official score, exp(mean_i ln(1 + s_i)) - 1 over the 22 achievements'
  success rates s_i in % (Hafner, 2021), a geometric mean that rewards breadth; its standard error
  comes from the delta method with the sample covariance of the achievements across episodes.
  `crafter_reward` — the episode return (+1 per first unlock, health change / 10).
  `crafter_achievement_fraction` — mean % of the 22 achievements unlocked per episode (an arithmetic
  mean: not the Crafter score).
- BALROG (Paglieri et al., 2024): `balrog_progression`, mean over episodes of the episode's progression
  in %: Crafter 100 * achievements unlocked / 22 (numerically crafter_achievement_fraction, named as
  BALROG reports it); TextWorld 100 * score / max_score, a won game counting 100. It is reported in a
  column of its own beside crafter_score / textworld_success_rate, never merged with them: BALROG's
  Crafter numbers are progression, not the Crafter score.
- BIG-Bench Hard: `bbh_accuracy` per task (% exact match) and `bbh_macro_accuracy`, the unweighted
  mean over tasks, whose standard error combines the tasks' as independent: sqrt(sum se_t^2) / T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.crafter import ACHIEVEMENTS, crafter_score


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


# ----------------------------------------------------------------------------------------------
# TextWorld

def textworld_normalised_score(score: float, max_score: float, won: bool) -> float:
    """One episode's score as % of the game's maximum (a game without points counts 100 if won, else 0)."""
    return 100.0 * score / max_score if max_score else 100.0 * float(won)


def balrog_textworld_progression(score: float, max_score: float, won: bool) -> float:
    """BALROG's TextWorld progression of one episode in %: 100 * score / max_score, 100 when won."""
    return 100.0 if won else (100.0 * score / max_score if max_score else 0.0)


def textworld_metrics(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Estimate]:
    """From episode records with `score`, `max_score`, `won`, `return` and `steps`."""
    _require(episodes, ("score", "max_score", "won", "return", "steps"), "TextWorld")
    return {
        "textworld_normalised_score": estimate(
            [textworld_normalised_score(e["score"], e["max_score"], e["won"]) for e in episodes], "%"),
        "textworld_success_rate": estimate([100.0 * bool(e["won"]) for e in episodes], "%"),
        "balrog_progression": estimate([balrog_textworld_progression(e["score"], e["max_score"], e["won"])
                                        for e in episodes], "%"),
        "episode_reward": estimate([e["return"] for e in episodes], "reward"),
        "episode_steps": estimate([e["steps"] for e in episodes], "steps"),
    }


# ----------------------------------------------------------------------------------------------
# Crafter

def achievement_matrix(unlocked: Sequence[Sequence[str]]) -> np.ndarray:
    """Episodes x 22 matrix of 0/100: whether each episode unlocked each achievement (in %)."""
    matrix = np.zeros((len(unlocked), len(ACHIEVEMENTS)))
    column = {name: j for j, name in enumerate(ACHIEVEMENTS)}
    for i, names in enumerate(unlocked):
        for name in set(names):
            if name not in column:
                raise ValueError(f"unknown Crafter achievement {name!r}; valid: {', '.join(ACHIEVEMENTS)}.")
            matrix[i, column[name]] = 100.0
    return matrix


def crafter_score_estimate(unlocked: Sequence[Sequence[str]]) -> Estimate:
    """The Crafter score (%) of a set of episodes, with a delta-method standard error.

    score = exp(mean_i ln(1 + s_i)) - 1; d score / d s_i = (score + 1) / (22 (1 + s_i)); the rates' covariance
    is the sample covariance of the per-episode 0/100 indicators divided by n.
    """
    if not unlocked:
        raise ValueError("the Crafter score needs at least one episode.")
    matrix = achievement_matrix(unlocked)
    rates = matrix.mean(axis=0)
    score = crafter_score(rates.tolist())
    n = matrix.shape[0]
    if n < 2:
        return Estimate(score, None, n, "%")
    gradient = (score + 1.0) / (len(ACHIEVEMENTS) * (1.0 + rates))
    covariance = np.cov(matrix, rowvar=False, ddof=1)
    variance = float(gradient @ covariance @ gradient) / n
    return Estimate(score, math.sqrt(max(variance, 0.0)), n, "%")


def crafter_metrics(episodes: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """(headline metrics, per-achievement success rates in %) from records with `achievements`, `return`, `steps`."""
    _require(episodes, ("achievements", "return", "steps"), "Crafter")
    unlocked = [list(e["achievements"]) for e in episodes]
    matrix = achievement_matrix(unlocked)
    metrics = {
        "crafter_score": crafter_score_estimate(unlocked),
        "crafter_reward": estimate([e["return"] for e in episodes], "reward"),
        "crafter_achievement_fraction": estimate((matrix.mean(axis=1)).tolist(), "%"),
        "balrog_progression": estimate([100.0 * len(set(names)) / len(ACHIEVEMENTS) for names in unlocked], "%"),
        "episode_steps": estimate([e["steps"] for e in episodes], "steps"),
    }
    per_achievement = {name: estimate(matrix[:, j].tolist(), "%") for j, name in enumerate(ACHIEVEMENTS)}
    return metrics, per_achievement


# ----------------------------------------------------------------------------------------------
# BIG-Bench Hard

def bbh_accuracy(correct: Sequence[bool]) -> Estimate:
    """% of items answered correctly (exact match after the environment's normalisation)."""
    return estimate([100.0 * bool(c) for c in correct], "%")


def bbh_metrics(correct_by_task: Mapping[str, Sequence[bool]]) -> tuple[dict[str, Estimate], Estimate]:
    """(accuracy per task, macro average over tasks)."""
    if not correct_by_task:
        raise ValueError("BIG-Bench Hard metrics need at least one task with answered items.")
    per_task = {task: bbh_accuracy(correct) for task, correct in sorted(correct_by_task.items())}
    return per_task, macro_average(list(per_task.values()), "%")


def _require(episodes: Sequence[Mapping[str, Any]], keys: Sequence[str], family: str) -> None:
    if not episodes:
        raise ValueError(f"{family} metrics need at least one episode.")
    for index, episode in enumerate(episodes):
        missing = [key for key in keys if key not in episode]
        if missing:
            raise ValueError(f"{family} episode #{index} lacks {', '.join(missing)}; episode records need "
                             f"{', '.join(keys)}.")
