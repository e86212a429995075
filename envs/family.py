"""What bwarea knows about one family of environments, declared once beside the environment.

Each family module (envs/textworld.py, envs/crafter.py, envs/bbh.py) ends with `FAMILY = EnvFamily(...)`:
how to build its environments, its splits and episode seeds, the options evaluation and play pass, the
metrics it reports and how they aggregate, its report table, its one-line play status and its RL task
settings. Evaluation, play, fine-tuning, plots and the viewer read only this object, so a new family is one
module plus `envs.register_family(FAMILY)` (tests/envs/test_family.py adds one that way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium

from common.errors import InvalidInput
from common.stats import Estimate

# The evaluation and play options a family may read (EvaluationConfig / PlayConfig fields of the same names).
Settings = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of a family's report table: a metric of `FAMILY.metrics`, shown with `digits` decimals under
    `header` (default "<metric> (<unit>)")."""

    metric: str
    digits: int = 1
    header: str | None = None


@dataclass(frozen=True)
class Breakdown:
    """Per-environment detail beside the headline metrics (Crafter: the success rate of each achievement).

    key: its name in summary.json; title: the report's heading; row, value: the headers of the report table's
    two columns; compute: episode records -> {row: Estimate}."""

    key: str
    title: str
    row: str
    value: str
    compute: Callable[[Sequence[Mapping[str, Any]]], dict[str, Estimate]]


@dataclass(frozen=True)
class Aggregate:
    """A number over all of a family's environments in one evaluation (BBH: the macro average of the tasks).

    name: its key in summary.json's aggregates; metric: the report column it is shown under;
    compute: {environment: episode records} -> Estimate."""

    name: str
    metric: str
    compute: Callable[[Mapping[str, Sequence[Mapping[str, Any]]]], Estimate]


def _index_seed(split: str, index: int) -> int:
    return index


def _no_options(settings: Settings) -> dict[str, Any]:
    return {}


def _nothing_resolved(env: gymnasium.Env) -> dict[str, Any]:
    return {}


def step_status(action: str, reward: float, info: Mapping[str, Any], *details: str) -> str:
    """`bwarea play`'s line after a step of a game: the action, its reward, `details`, the step count and whether
    the action was valid ("[take coin] reward +1.00 · score 1/1 · step 3/50")."""
    parts = [f"[{action}] reward {reward:+.2f}", *details, f"step {info.get('steps')}/{info.get('max_steps')}"]
    if info.get("invalid_action"):
        parts.append("(not a valid action)")
    return " · ".join(parts)


@dataclass(frozen=True)
class EnvFamily:
    """One family of environments, named "<name>" (no variants) or "<name>/<variant>".

    name, title: "textworld", "TextWorld" (report headings).
    make(variant, **options): a new environment ("" as the variant of a family without variants).
    variants: the valid variants (presets, tasks), or None for a family with one environment.
    variant_kind: what a variant is called in messages ("preset", "task").
    splits: the valid `split` options; episode_seed(split, index): the seed `reset` gets for episode `index`.
    options(settings): constructor options from the evaluation / play settings (split, max_steps, data paths).
    resolved_options(env): what a built environment settled on (default paths, its step limit), for provenance.
    finite: episodes are the split's items, at most len(env) of them (else any index is an episode).
    prepare(variant, split, indices, options, progress): builds what the planned episodes need before play
        (TextWorld: the game files), or None.
    training_split: the split RL fine-tuning draws its tasks from (None: the family has no split option).
    recorded_info: `info` entries copied into every episode record.
    metrics(records): the headline Estimates of one environment's finished episodes.
    columns, row_label, note(options): the report table (a column per metric), its first column's header and
        label of an environment, and the line under it.
    breakdown, aggregate: optional detail per environment and numbers across the family's environments.
    status(action, reward, info): `bwarea play`'s line after each step.
    answers_questions: an episode is one question and its answer (no objective line, numbers are answers).
    renders_frames: `render()` gives an RGB frame (`bwarea play --frames`, the viewer's pictures).
    """

    name: str
    title: str
    make: Callable[..., gymnasium.Env]
    metrics: Callable[[Sequence[Mapping[str, Any]]], dict[str, Estimate]]
    columns: tuple[Column, ...]
    variants: Callable[[], Sequence[str]] | None = None
    variant_kind: str = "variant"
    splits: tuple[str, ...] = ("train", "validation", "test")
    episode_seed: Callable[[str, int], int] = _index_seed
    options: Callable[[Settings], dict[str, Any]] = _no_options
    resolved_options: Callable[[gymnasium.Env], dict[str, Any]] = _nothing_resolved
    finite: bool = False
    prepare: Callable[..., None] | None = None
    training_split: str | None = "train"
    recorded_info: tuple[str, ...] = ()
    row_label: str = "environment"
    note: Callable[[Mapping[str, Any]], str] | None = None
    breakdown: Breakdown | None = None
    aggregate: Aggregate | None = None
    status: Callable[[str, float, Mapping[str, Any]], str] = step_status
    answers_questions: bool = False
    renders_frames: bool = False

    @property
    def pattern(self) -> str:
        return self.name if self.variants is None else f"{self.name}/<{self.variant_kind}>"

    def names(self) -> list[str]:
        return [self.name] if self.variants is None else [f"{self.name}/{v}" for v in self.variants()]

    def label(self, env_name: str) -> str:
        """An environment's label in the report table (a variant alone when the column names its kind)."""
        return env_name.partition("/")[2] if self.row_label == self.variant_kind else env_name

    def check_split(self, env_name: str, split: str) -> None:
        if split not in self.splits:
            raise InvalidInput(f"split {split!r} does not exist for {env_name}; choose one of {', '.join(self.splits)}.")
