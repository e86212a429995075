"""What an evaluation depends on: `EvaluationConfig`, one field per `bwarea evaluate` option, and its files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError

FORMAT = "bwarea-evaluation/1"
SETTINGS_FILE = "evaluation.json"
EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
INVOCATIONS_FILE = "invocations.jsonl"
LOCK_FILE = ".lock"
PLOTS_DIR = "plots"
TRACE_MODES = ("full", "compact", "none")


class EvaluationError(UserError, ValueError):
    """Settings or an output directory that an evaluation cannot use."""


@dataclass
class EvaluationConfig:
    """Evaluate an agent on TextWorld / Crafter / BIG-Bench Hard: resumable, with a report.

    Args:
        agent: Agent config: a name in configs/agents (random, walkthrough, spring, textworld_dag, bbh_dag, direct,
            own_model), a YAML path, or a mapping in a --config file.
        suite: Environment names (textworld/<preset>, crafter, bbh/<task>) or glob patterns (bbh/*).
        episodes: Episodes per environment and seed (BIG-Bench Hard: items, at most the split's size).
        seeds: Evaluation seeds: each plays every episode once, seeding the agent's sampling.
        out: Output directory (default runs/evaluate/<agent>-<hash of the settings>). Re-running with the same
            settings resumes it.
        first_episode: Index of the first episode (TextWorld game / BBH item / Crafter world in the split).
        split: Held-out episodes by default: test. TextWorld and Crafter: train / validation / test; BIG-Bench
            Hard: train / test / all.
        max_steps: Step limit per episode (default: each environment's own: TextWorld per preset, Crafter 10000).
        batch_size: Environments played side by side with one batched agent call per step.
        agent_overrides: Deep-merged into the agent config, e.g. '{"backend": {"model": "runs/x/export"}}'.
        textworld_cache_dir: TextWorld game cache (default $BWAREA_CACHE_DIR/textworld or
            ~/.cache/bwarea/textworld).
        bbh_data_dir: BIG-Bench Hard copy (tasks/, cot-prompts/); default $BWAREA_BBH_DIR.
        bbh_shots: BIG-Bench Hard prompts: 0 (zero-shot) or 3 (chain-of-thought examples).
        bbh_split_seed: Seed of the BIG-Bench Hard train/test split (keep it equal to fine-tuning's).
        traces: Agent traces in episodes.jsonl: full (prompts and answers), compact (answers, tokens and latent
            actions, no prompts) or none.
        plots: Write PNG plots of the results to <out>/plots.
        overwrite: Delete an earlier evaluation in --out and start afresh.
        progress: Show progress (per environment step, with parse / fallback / fault counters).
        keep_faulted: Keep recorded episodes that contain backend faults instead of replaying them.
        max_failed_rounds: Circuit breaker: stop (exit 3) after this many consecutive backend rounds in which every
            request failed.
    """

    agent: str | dict[str, Any] = "random"
    suite: list[str] = field(default_factory=lambda: ["textworld/coin-easy"])
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str | None = None
    first_episode: int = 0
    split: str = "test"
    max_steps: int | None = None
    batch_size: int = 8
    agent_overrides: dict[str, Any] = field(default_factory=dict)
    textworld_cache_dir: str | None = None
    bbh_data_dir: str | None = None
    bbh_shots: int = 0
    bbh_split_seed: int = 0
    traces: str = "full"
    plots: bool = True
    overwrite: bool = False
    progress: bool = True
    keep_faulted: bool = False
    max_failed_rounds: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.suite, str):
            self.suite = [self.suite]
        if not self.suite:
            raise EvaluationError("the suite is empty; name at least one environment (see envs.names()).")
        if self.episodes < 1:
            raise EvaluationError(f"episodes must be at least 1, got {self.episodes}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EvaluationError(f"seeds must be a non-empty list without repeats, got {self.seeds}.")
        if self.first_episode < 0:
            raise EvaluationError(f"first_episode must be 0 or more, got {self.first_episode}.")
        if self.batch_size < 1:
            raise EvaluationError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvaluationError(f"max_steps must be at least 1 (or unset for each environment's own), got {self.max_steps}.")
        if self.max_failed_rounds < 1:
            raise EvaluationError(f"max_failed_rounds must be at least 1, got {self.max_failed_rounds}.")
        if self.traces not in TRACE_MODES:
            raise EvaluationError(f"traces {self.traces!r} is unknown; choose one of {', '.join(TRACE_MODES)}.")
