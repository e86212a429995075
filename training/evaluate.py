"""`bwarea evaluate`: any agent on any suite of environments, resumable, with a report.

    bwarea evaluate --agent random --suite textworld/coin-easy crafter --episodes 10 --seeds 0 1 --out runs/eval/random
    bwarea evaluate --config configs/evaluate/textworld-coin.yaml --agent own_model \\
        --agent_overrides '{"backend": {"model": "runs/quickstart/finetune/bwarea/export"}}'
    bwarea evaluate --agent walkthrough --suite 'textworld/*-easy' --episodes 5   # names may be glob patterns

Python API (what `bwarea quickstart` calls):

    from training.evaluate import evaluate
    summary = evaluate("random", ["textworld/coin-easy"], episodes=10, seeds=[0], out_dir="runs/eval/random")

Episodes. For every evaluation seed s, environment e and episode index j (`first_episode` ..
`first_episode + episodes - 1`) one episode is played: TextWorld game j of `split` (test by default),
BIG-Bench Hard item j of `split` (fewer when the split is smaller), Crafter world 2,000,000 + j on the
test split (train 0 + j, validation 1,000,000 + j: the same offsets TextWorld uses, so evaluation worlds
never meet the corpus's seeds 0, 1, 2, ...). The seed s does not change the episodes; it seeds the agent:
an agent's own `seed` (the random agent) and an in-process backend's sampling seed are derived from
(s, environment, batch).

Batching. The episodes of one (seed, environment) are cut into fixed batches of `batch_size`, played
together: one `agent.act_batch` call per step over all running environments of the batch (so an LLM
agent sends one batched request per step or DAG generation). Each batch starts with a fresh agent.

Output directory:

    evaluation.json      the settings (written first; a restart must match them)
    episodes.jsonl       one line per finished episode: trajectory (observations, actions, rewards),
                         agent traces, faults, final score (appended, flushed and fsynced line by line)
    summary.json         metrics (mean ± standard error) with the exact settings beside them
    report.md            the same as Markdown tables
    plots/*.png          Crafter achievement bars, BIG-Bench Hard task bars, latent-action usage
    invocations.jsonl    wall time, throughput and context-reading time of each invocation (kept out of the report)

Resuming. Re-running the same command skips the episodes already in episodes.jsonl (a torn last line,
left by a kill during a write, is dropped). A batch with a missing episode is played again in full
and only the missing episodes are appended, so each batch is played exactly as in an uninterrupted
run; the report is a function of the episode records alone (no times in it), hence identical. This
holds for agents whose batch outcome depends only on the batch: scripted and random agents, and
language-model agents on in-process backends, sampled ones included (the backend's random stream is
restarted from unit_seed(seed, environment, batch) before every batch). A remote (HTTP) server's
sampling is not ours to seed, so only its greedy runs resume exactly; re-played episodes that differ
from their record are reported on stderr. Episodes that raised an error are recorded with the error
and tried again by the next invocation.

Failing loudly. Before the first episode a language-model agent is built (a config error stops here)
and its backend answers one tiny request (a health check; a wrong port or a dead server stops here),
and SPRING's reading step runs (its time is reported on its own, not as step latency); nothing is
written to the output directory before these pass. During play, a circuit breaker stops the
evaluation once `max_failed_rounds` consecutive backend rounds failed entirely: one error naming the
server and the last failure, exit status 3, finished episodes kept. An episode in which any backend
request failed is recorded with `"faulted": true` (its failed steps took the fallback action); the
next invocation replays it (with its batch) unless `--keep_faulted true`, and the report says how many
remain. Progress is shown per environment step, with live parse / fallback / fault counters.

Metric definitions: training/metrics.py; user guide: docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm.auto import tqdm

import agents
import envs
from agents.factory import AGENTS
from agents.llm import BackendUnavailable
from bwarea.checkpoint import atomic_write_text
from training.metrics import Estimate, bbh_metrics, crafter_metrics, textworld_metrics
from training.rollout import describe_error

FORMAT = "bwarea-evaluation/1"
SETTINGS_FILE = "evaluation.json"
EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
INVOCATIONS_FILE = "invocations.jsonl"
PLOTS_DIR = "plots"
TRACE_MODES = ("full", "compact", "none")
SPLITS = {"textworld": ("train", "validation", "test"), "crafter": ("train", "validation", "test"),
          "bbh": ("train", "test", "all")}
# Crafter has no splits of its own: world seeds get the offsets TextWorld uses for its game seeds.
CRAFTER_SPLIT_OFFSET = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
VERSIONED_PACKAGES = ("bwarea", "torch", "transformers", "tokenizers", "textworld", "crafter", "gymnasium", "numpy")
# info entries copied into an episode record (the rest, e.g. admissible actions, would only repeat the traces)
RECORDED_INFO = ("score", "max_score", "won", "lost", "achievements", "preset", "split", "index", "game_seed",
                 "bbh_task", "item", "target", "prediction", "extracted_answer")


class EvaluationError(ValueError):
    """Settings or an output directory that an evaluation cannot use."""


@dataclass
class EvaluationConfig:
    """Everything an evaluation depends on (see `build_parser` for each option's meaning)."""

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


# ----------------------------------------------------------------------------------------------
# The plan: which episodes, with which environment seeds

def family_of(name: str) -> str:
    return name.partition("/")[0]


def expand_suite(patterns: Sequence[str]) -> list[str]:
    """Environment names from names or glob patterns ("bbh/*", "textworld/*-easy"), in order, without repeats."""
    valid = envs.names()
    names: list[str] = []
    for pattern in patterns:
        matches = [name for name in valid if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise EvaluationError(f"suite entry {pattern!r} names no environment; valid names are "
                                  f"{', '.join(envs.PATTERNS)} (e.g. textworld/coin-easy, crafter, bbh/navigate), "
                                  "or glob patterns such as bbh/*.")
        names += [name for name in matches if name not in names]
    return names


def env_options(name: str, split: str = "test", max_steps: int | None = None, textworld_cache_dir: str | None = None,
                bbh_data_dir: str | None = None, bbh_shots: int = 0, bbh_split_seed: int = 0) -> dict[str, Any]:
    """Constructor arguments of environment `name` (shared by `bwarea evaluate` and `bwarea play`)."""
    family = family_of(name)
    if split not in SPLITS[family]:
        raise EvaluationError(f"split {split!r} does not exist for {name}; choose one of {', '.join(SPLITS[family])}.")
    if family == "textworld":
        options: dict[str, Any] = {"split": split, "cache_dir": textworld_cache_dir}
    elif family == "crafter":
        options = {}
    else:
        options = {"split": split, "data_dir": bbh_data_dir, "shots": bbh_shots, "split_seed": bbh_split_seed}
    if max_steps is not None and family != "bbh":
        options["max_steps"] = max_steps
    return options


def config_env_options(name: str, config: EvaluationConfig) -> dict[str, Any]:
    return env_options(name, config.split, config.max_steps, config.textworld_cache_dir, config.bbh_data_dir,
                       config.bbh_shots, config.bbh_split_seed)


def env_seed(name: str, split: str, index: int) -> int:
    """The seed passed to `reset` for episode `index`: a game / item index, or a Crafter world seed."""
    return CRAFTER_SPLIT_OFFSET[split] + index if family_of(name) == "crafter" else index


@dataclass
class Unit:
    """One batch of episodes of one environment under one evaluation seed: the unit of work and of resumption."""

    env: str
    seed: int
    batch: int
    episodes: list[int]
    env_seeds: list[int]

    def keys(self) -> list[tuple[str, int, int]]:
        return [(self.env, self.seed, episode) for episode in self.episodes]


def plan_units(names: Sequence[str], config: EvaluationConfig, sizes: Mapping[str, int | None]) -> list[Unit]:
    """All units, seeds outermost. `sizes[name]`: how many episodes the environment has (BBH split size),
    or None for unbounded."""
    units = []
    for seed in config.seeds:
        for name in names:
            last = config.first_episode + config.episodes
            if sizes.get(name) is not None:
                last = min(last, sizes[name])
            indices = list(range(config.first_episode, last))
            for batch, start in enumerate(range(0, len(indices), config.batch_size)):
                chunk = indices[start:start + config.batch_size]
                units.append(Unit(name, seed, batch, chunk, [env_seed(name, config.split, j) for j in chunk]))
    return units


def unit_seed(seed: int, env: str, batch: int) -> int:
    """The seed of an agent's own random generator for one batch: a fixed function of (seed, env, batch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{env}:{batch}".encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------------------------
# Settings written beside every number

def _canonical_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _file_sha256(path: Path, limit_bytes: int = 512 * 2**20) -> str | None:
    if not path.is_file() or path.stat().st_size > limit_bytes:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprint(model: str) -> dict[str, Any] | None:
    """For a local model directory: sha256 of config.json, training_info.json and (up to 512 MiB) the weights."""
    directory = Path(model).expanduser()
    if not directory.is_dir():
        return None
    fingerprint: dict[str, Any] = {"path": str(directory)}
    for name in ("config.json", "training_info.json", "model.safetensors"):
        path = directory / name
        if path.is_file():
            fingerprint[name] = {"bytes": path.stat().st_size, "sha256": _file_sha256(path)}
    return fingerprint


def describe_agent(source: str | Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's settings that decide its numbers: type, backend and model, sampling, history, DAG + its hash."""
    agent = dict(resolved["agent"])
    description: dict[str, Any] = {
        "source": source if isinstance(source, str) else "inline mapping",
        "type": agent["type"],
        "config": resolved,
        "config_sha256": _canonical_sha256(resolved),
    }
    for key in ("temperature", "max_tokens", "history", "style", "parsing", "answer_format", "execution",
                "fallback_action"):
        if key in agent:
            description[key] = agent[key]
    backend = resolved.get("backend")
    if isinstance(backend, Mapping):
        description["backend"] = backend.get("type")
        description["model"] = backend.get("model")
        for key in ("package", "base_url", "token_temperature", "top_k", "top_p"):
            if backend.get(key) is not None:
                description[key] = backend[key]
        if backend.get("model") is not None:
            fingerprint = model_fingerprint(str(backend["model"]))
            if fingerprint:
                description["model_files"] = fingerprint
    if agent.get("dag") is not None:
        dag = agents.QuestionDAG.load(agent["dag"])
        declaration = {"name": dag.name, "nodes": [dataclasses.asdict(node) for node in dag.nodes.values()]}
        description["dag"] = {"name": dag.name, "nodes": len(dag.nodes), "edges": dag.num_edges,
                              "sha256": _canonical_sha256(declaration)}
    if isinstance(agent.get("context"), Mapping):
        description["context_document"] = agent["context"].get("document")
    return description


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts)


def build_settings(config: EvaluationConfig, names: Sequence[str], resolved_agent: Mapping[str, Any],
                   units: Sequence[Unit], options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The settings behind the numbers; `options[name]`: each environment's resolved options (data paths,
    effective max_steps)."""
    environments = {}
    for name in names:
        episodes = sorted({j for unit in units if unit.env == name for j in unit.episodes})
        seeds = [env_seed(name, config.split, j) for j in episodes]
        environments[name] = {"family": family_of(name), "episodes": len(episodes), "episode_indices": _ranges(episodes),
                              "env_seeds": _ranges(seeds), "options": dict(options[name])}
    return {
        "format": FORMAT,
        "agent": describe_agent(config.agent, resolved_agent),
        "suite": list(names),
        "episodes_per_seed": config.episodes,
        "first_episode": config.first_episode,
        "seeds": list(config.seeds),
        "split": config.split,
        "max_steps": config.max_steps,
        "batch_size": config.batch_size,
        "traces": config.traces,
        "seeding": "per batch, an agent's own seed and an in-process backend's sampling seed = unit_seed(seed, environment, batch)",
        "environments": environments,
        "versions": package_versions(),
    }


def settings_line(settings: Mapping[str, Any]) -> str:
    """One line with the settings that decide the numbers (shown under every table)."""
    agent = settings["agent"]
    parts = [f"agent {agent['type']} ({agent['source']}, config sha256 {agent['config_sha256'][:12]})"]
    if agent.get("backend"):
        parts.append(f"backend {agent['backend']}, model {agent.get('model')}")
    for key in ("temperature", "max_tokens", "history", "style"):
        if key in agent:
            parts.append(f"{key.replace('_', ' ')} {agent[key]}")
    if agent.get("dag"):
        parts.append(f"DAG {agent['dag']['name']} (sha256 {agent['dag']['sha256'][:12]})")
    parts.append(f"seeds {settings['seeds']}")
    parts.append(f"split {settings['split']}")
    versions = settings["versions"]
    parts.append("python {python}, torch {torch}, transformers {transformers}, textworld {textworld}, "
                 "crafter {crafter}".format(**versions))
    return "Settings: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------------------------
# Episode records

def _jsonable(value: Any) -> Any:
    """json.dumps fallback for numpy scalars/arrays, tuples in infos and paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def trace_record(trace: agents.StepTrace, mode: str) -> dict[str, Any] | None:
    """A StepTrace as stored: full, compact (no prompts) or none. The observation is left out: the trajectory
    holds it at the same step."""
    if mode == "none":
        return None
    data = trace.to_dict()
    data.pop("observation", None)
    if mode == "compact":
        for node in data["nodes"]:
            node.pop("request", None)
    return data


class EpisodeRecorder:
    """Collects one episode while it is played and turns it into its JSONL record."""

    def __init__(self, env: str, seed: int, batch: int, episode: int, reset_seed: int, observation: str,
                 info: Mapping[str, Any], trace_mode: str = "full") -> None:
        self.header = {"env": env, "family": family_of(env), "seed": seed, "episode": episode, "env_seed": reset_seed,
                       "batch": batch, "task": str(info.get("task") or "")}
        self.observation = observation
        self.trace_mode = trace_mode
        self.trajectory: list[dict[str, Any]] = []
        self.traces: list[dict[str, Any]] = []
        self.stats = agents.AgentStats()
        self.faults: list[str] = []
        self.latent_actions: dict[int, int] = {}
        self.total_reward = 0.0
        self.info: dict[str, Any] = dict(info)
        self.terminated = self.truncated = False
        self.error: str | None = None

    def step(self, action: str, reward: float, observation: str, info: Mapping[str, Any], terminated: bool,
             truncated: bool, trace: agents.StepTrace | None) -> None:
        entry: dict[str, Any] = {"observation": self.observation, "action": action, "reward": float(reward),
                                 "invalid_action": bool(info.get("invalid_action", False))}
        if info.get("new_achievements"):
            entry["new_achievements"] = list(info["new_achievements"])
        self.trajectory.append(entry)
        self.total_reward += float(reward)
        self.observation, self.info = observation, dict(info)
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        if trace is not None:
            self.stats.add(trace)
            self.faults += [f"step {trace.step}: {fault}" for fault in trace.faults]
            for node in trace.nodes:
                for action_id in node.metadata.get("actions", []) or []:
                    self.latent_actions[int(action_id)] = self.latent_actions.get(int(action_id), 0) + 1
            stored = trace_record(trace, self.trace_mode)
            if stored is not None:
                self.traces.append(stored)

    def record(self) -> dict[str, Any]:
        stats = self.stats.to_dict()
        stats.pop("rounds", None)   # a per-batch count; summed per episode it would count shared calls twice
        record = {**self.header, "steps": len(self.trajectory), "return": self.total_reward,
                  "terminated": self.terminated, "truncated": self.truncated}
        record.update({key: self.info[key] for key in RECORDED_INFO if key in self.info})
        if record["family"] == "bbh":
            record["correct"] = bool(self.info.get("won", False))
        record.update(final_observation=self.observation, trajectory=self.trajectory, agent_stats=stats,
                      faults=self.faults, faulted=bool(self.faults),
                      latent_actions={str(k): v for k, v in sorted(self.latent_actions.items())},
                      traces=self.traces, error=self.error)
        return json.loads(json.dumps(record, default=_jsonable))   # plain JSON types, as read back from disk


def play_batch(agent: agents.Agent, environments: Sequence[Any], unit: Unit, trace_mode: str,
               on_episode: Callable[[dict[str, Any]], None],
               on_step: Callable[[Sequence[agents.StepTrace]], None] | None = None) -> None:
    """Play one unit: its episodes side by side, one `act_batch` per step; `on_step(traces)` after each step,
    `on_episode(record)` as each episode ends.

    An exception while stepping (a crashed game, an agent bug) ends the batch: each unfinished episode is
    recorded with the error (and retried by the next invocation). Errors at reset propagate: they mean the
    agent or environment cannot be used at all (e.g. the walkthrough agent outside TextWorld); so does
    BackendUnavailable (the circuit breaker), leaving the unfinished episodes unrecorded for the next run.
    """
    batch = envs.BatchEnv(environments)
    observations, infos = batch.reset(unit.env_seeds)
    agent.reset_batch(infos)
    recorders = [EpisodeRecorder(unit.env, unit.seed, unit.batch, episode, seed, observation, info, trace_mode)
                 for episode, seed, observation, info in zip(unit.episodes, unit.env_seeds, observations, infos)]
    reported = [False] * len(recorders)
    while batch.running:
        active = [not done for done in batch.done]
        try:
            actions = agent.act_batch(observations, infos, active)
            observations, rewards, terminated, truncated, infos = batch.step(actions)
        except BackendUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - recorded in the episodes, which the next invocation retries
            message = describe_error(error)
            for i, recorder in enumerate(recorders):
                if not reported[i]:
                    recorder.error = message
                    on_episode(recorder.record())
            return
        if on_step is not None:
            on_step(agent.last_traces)
        traces = {trace.env_index: trace for trace in agent.last_traces}
        for i, recorder in enumerate(recorders):
            if active[i]:
                recorder.step(actions[i], rewards[i], observations[i], infos[i], terminated[i], truncated[i],
                              traces.get(i))
        for i, done in enumerate(batch.done):
            if done and not reported[i]:
                reported[i] = True
                on_episode(recorders[i].record())


# ----------------------------------------------------------------------------------------------
# The JSONL log of episodes: appended line by line, fsynced, torn last line ignored

def episode_key(record: Mapping[str, Any]) -> tuple[str, int, int]:
    return record["env"], int(record["seed"]), int(record["episode"])


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an episodes.jsonl (a torn last line, from a kill during a write, is skipped)."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):   # no newline after it: the write was cut off
                continue
            raise EvaluationError(f"{path}: line {number} is not valid JSON; the file was changed by hand or damaged. "
                                  "Delete that line (its episode will be played again) or start afresh with "
                                  "--overwrite true.") from None
    return records


def repair_torn_line(path: Path) -> None:
    """Cut a torn last line (no newline after it) so the next append starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line in a single write, then flush it to disk."""
    data = (json.dumps(record, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def same_outcome(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two records of one episode played out alike (actions, rewards, final score; times ignored)."""
    def outcome(record: Mapping[str, Any]) -> Any:
        return ([(s["action"], s["reward"]) for s in record["trajectory"]], record.get("score"), record.get("error"))
    return outcome(a) == outcome(b)


# ----------------------------------------------------------------------------------------------
# Summary and report

def summarize(records: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of an evaluation: a pure function of the episode records (planned ones, in plan order) and
    the settings, so a resumed evaluation gives the identical summary."""
    environments: dict[str, Any] = {}
    bbh_correct: dict[str, list[bool]] = {}
    latent_total: dict[str, int] = {}
    for name in settings["suite"]:
        planned = settings["environments"][name]["episodes"] * len(settings["seeds"])
        own = [r for r in records if r["env"] == name]
        good = [r for r in own if r.get("error") is None]
        entry: dict[str, Any] = {"family": family_of(name), "planned": planned, "completed": len(good),
                                 "faulted": sum(is_faulted(r) for r in good), "errored": len(own) - len(good),
                                 "errors": sorted({r["error"] for r in own if r.get("error")}), "metrics": {}}
        if good:
            family = family_of(name)
            if family == "textworld":
                entry["metrics"] = _dicts(textworld_metrics(good))
            elif family == "crafter":
                metrics, per_achievement = crafter_metrics(good)
                entry["metrics"], entry["achievement_success_rates"] = _dicts(metrics), _dicts(per_achievement)
            else:
                per_task, _ = bbh_metrics({name: [r["correct"] for r in good]})
                entry["metrics"] = {"bbh_accuracy": per_task[name].to_dict()}
                bbh_correct[name] = [r["correct"] for r in good]
        totals = {key: sum(r["agent_stats"].get(key, 0) for r in good)
                  for key in ("steps", "parse_failures", "fallbacks", "faults", "tokens_in", "tokens_out")}
        provenance: dict[str, int] = {}
        for record in good:
            for how, count in (record["agent_stats"].get("provenance") or {}).items():
                provenance[how] = provenance.get(how, 0) + count
        entry["agent"] = {**totals, "provenance": dict(sorted(provenance.items()))}
        for record in good:
            for action, count in record.get("latent_actions", {}).items():
                latent_total[action] = latent_total.get(action, 0) + count
        environments[name] = entry
    aggregates: dict[str, Any] = {}
    if bbh_correct:
        aggregates["bbh_macro_accuracy"] = {**bbh_metrics(bbh_correct)[1].to_dict(), "tasks": len(bbh_correct)}
    complete = all(e["completed"] == e["planned"] for e in environments.values())
    return {"format": FORMAT, "complete": complete, "settings": dict(settings), "environments": environments,
            "aggregates": aggregates,
            "latent_actions": {k: latent_total[k] for k in sorted(latent_total, key=int)}}


def _dicts(estimates: Mapping[str, Estimate]) -> dict[str, dict[str, Any]]:
    return {name: e.to_dict() for name, e in estimates.items()}


def _cell(data: Mapping[str, Any] | None, digits: int = 1) -> str:
    return Estimate.from_dict(data).format(digits) if data else "—"


def render_report(summary: Mapping[str, Any]) -> str:
    """report.md: one table per benchmark family, each followed by the settings behind its numbers."""
    settings = summary["settings"]
    line = settings_line(settings)
    environments = summary["environments"]
    by_family: dict[str, list[str]] = {}
    for name, entry in environments.items():
        by_family.setdefault(entry["family"], []).append(name)
    out = [f"# Evaluation of agent `{settings['agent']['type']}` ({settings['agent']['source']})", ""]
    if not summary["complete"]:
        out += ["**Incomplete**: some planned episodes are missing or errored; re-run the same command to finish.", ""]
    faulted = sum(entry.get("faulted", 0) for entry in environments.values())
    if faulted:
        out += [f"**{faulted} episode(s) contain backend faults** (steps that took the fallback action after a failed "
                "request); re-running the same command replays them, --keep_faulted true keeps them.", ""]
    out += ["Numbers are mean ± standard error over episodes (items for BIG-Bench Hard); n = episodes.", ""]

    if "textworld" in by_family:
        out += ["## TextWorld", "",
                "| environment | n | textworld_normalised_score (%) | textworld_success_rate (%) | "
                "balrog_progression (%) | reward | steps |",
                "|---|---|---|---|---|---|---|"]
        for name in by_family["textworld"]:
            m = environments[name]["metrics"]
            out.append(f"| {name} | {environments[name]['completed']} | {_cell(m.get('textworld_normalised_score'))} | "
                       f"{_cell(m.get('textworld_success_rate'))} | {_cell(m.get('balrog_progression'))} | "
                       f"{_cell(m.get('episode_reward'), 2)} | {_cell(m.get('episode_steps'))} |")
        out += ["", line, ""]

    if "crafter" in by_family:
        out += ["## Crafter", "",
                "| environment | n | crafter_score (%) | balrog_progression (%) | crafter_reward | steps |",
                "|---|---|---|---|---|---|"]
        for name in by_family["crafter"]:
            m = environments[name]["metrics"]
            out.append(f"| {name} | {environments[name]['completed']} | {_cell(m.get('crafter_score'), 2)} | "
                       f"{_cell(m.get('balrog_progression'))} | {_cell(m.get('crafter_reward'), 2)} | "
                       f"{_cell(m.get('episode_steps'))} |")
        out += ["", "crafter_score is the geometric mean exp(mean_i ln(1 + s_i)) - 1 over the 22 success rates s_i (%); "
                "balrog_progression is BALROG's metric, the mean share of the 22 achievements unlocked per episode "
                "(also stored as crafter_achievement_fraction). The two are different numbers: compare each only with "
                "its own kind.", ""]
        for name in by_family["crafter"]:
            rates = environments[name].get("achievement_success_rates")
            if rates:
                out += [f"Success rate per achievement, {name} (% of episodes):", "",
                        "| achievement | success rate (%) |", "|---|---|"]
                out += [f"| {achievement} | {_cell(rate)} |" for achievement, rate in rates.items()]
                out.append("")
        out += [line, ""]

    if "bbh" in by_family:
        out += ["## BIG-Bench Hard", "", "| task | n | bbh_accuracy (%) |", "|---|---|---|"]
        for name in by_family["bbh"]:
            out.append(f"| {name.partition('/')[2]} | {environments[name]['completed']} | "
                       f"{_cell(environments[name]['metrics'].get('bbh_accuracy'))} |")
        macro = summary["aggregates"].get("bbh_macro_accuracy")
        if macro:
            out.append(f"| **bbh_macro_accuracy** ({macro['tasks']} tasks) | {macro['n']} | **{_cell(macro)}** |")
        out += ["", f"BBH: {settings['environments'][by_family['bbh'][0]]['options'].get('shots', 0)}-shot prompts, "
                "exact match after normalisation; the macro average weighs every task equally.", "", line, ""]

    provenance = {name: e["agent"].get("provenance") or {} for name, e in environments.items()}
    if any(provenance.values()):
        kinds = ["exact", "word", "fuzzy", "choice", "fallback"]
        others = sorted({k for counts in provenance.values() for k in counts} - set(kinds))
        out += ["## How actions were obtained", "",
                "| environment | steps | " + " | ".join(f"{k} (%)" for k in kinds + others) + " |",
                "|---|---|" + "---|" * len(kinds + others)]
        for name, counts in provenance.items():
            total = sum(counts.values())
            if total:
                out.append(f"| {name} | {total} | " + " | ".join(f"{100.0 * counts.get(k, 0) / total:.1f}"
                                                            for k in kinds + others) + " |")
        out += ["", "exact: the answer is an action name or alias; word: a name found in the answer; fuzzy: a "
                "misspelt short answer; choice: picked among the valid actions by likelihood; fallback: a failed "
                "request or an unparseable answer.", ""]

    faults = {name: e for name, e in environments.items()
              if e["errored"] or e.get("faulted") or e["agent"]["faults"] or e["agent"]["parse_failures"]}
    if faults:
        out += ["## Faults", "", "| environment | errored episodes | faulted episodes | steps with backend faults | "
                "parse failures | fallbacks |", "|---|---|---|---|---|---|"]
        out += [f"| {name} | {e['errored']} | {e.get('faulted', 0)} | {e['agent']['faults']} | "
                f"{e['agent']['parse_failures']} | {e['agent']['fallbacks']} |" for name, e in faults.items()]
        errors = sorted({error for e in faults.values() for error in e["errors"]})
        out += [""] + [f"- error: `{error}`" for error in errors] + ([""] if errors else [])

    out += ["## Settings", "", "```json", json.dumps(settings, indent=2, default=str), "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Running an evaluation

class AgentFactory:
    """Fresh agents per unit; a language-model backend is loaded once and shared, its sampling restarted per unit,
    and so is the agent's context (SPRING's reading step runs once)."""

    def __init__(self, resolved: Mapping[str, Any], max_failed_rounds: int | None = None) -> None:
        self.config = dict(resolved)
        kind = self.config["agent"]["type"]
        if kind == "human":
            raise EvaluationError("the human agent cannot be evaluated unattended; play yourself with `bwarea play`.")
        if kind not in AGENTS:
            raise EvaluationError(f"agent type {kind!r} is unknown; choose one of {', '.join(AGENTS)}.")
        config_class, _, self.needs_backend = AGENTS[kind]
        self.own_seed = "seed" in {f.name for f in dataclasses.fields(config_class)}
        self.max_failed_rounds = max_failed_rounds
        self._backend: agents.Backend | None = None
        self.context: Any = None          # what the agent's prepare() built (SPRING: a ContextResult), shared
        self.context_s: float | None = None

    def prepare(self) -> None:
        """Everything that can fail before the first episode: build an agent (checks its config), load the backend,
        health-check it, and run the agent's one-off preparation (SPRING's reading step), timed on its own."""
        agent = self.make(Unit("", 0, 0, [], []))
        if self._backend is not None:
            self._backend.check()
        start = time.perf_counter()
        self.context = agent.prepare()
        if self.context is not None:
            self.context_s = time.perf_counter() - start

    def make(self, unit: Unit) -> agents.Agent:
        overrides = {"agent": {"seed": unit_seed(unit.seed, unit.env, unit.batch)}} if self.own_seed else {}
        if not self.needs_backend:
            return agents.make_agent(self.config, overrides=overrides)
        if self._backend is None:
            self._backend = agents.make_backend(self.config["backend"])
            self._backend.max_failed_rounds = self.max_failed_rounds
        # a batch's samples must not depend on the batches before it, or a resumed run would draw differently
        self._backend.reseed(unit_seed(unit.seed, unit.env, unit.batch))
        agent = agents.make_agent(self.config, backend=self._backend, overrides=overrides)
        if self.context is not None:
            agent.context = self.context
        return agent

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def default_out(config: EvaluationConfig, names: Sequence[str]) -> Path:
    stem = Path(config.agent).stem if isinstance(config.agent, str) else "agent"
    # every setting that changes the episodes (not where files go or how progress is shown)
    shaping = {k: v for k, v in dataclasses.asdict(config).items()
               if k not in ("suite", "out", "overwrite", "progress", "plots", "textworld_cache_dir", "keep_faulted",
                            "max_failed_rounds")}
    key = _canonical_sha256([shaping, list(names)])[:8]
    return Path("runs") / "evaluate" / f"{stem}-{key}"


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def check_directory(out: Path, settings: Mapping[str, Any], overwrite: bool) -> bool:
    """Whether `out` holds an earlier evaluation with the same settings to resume (False: start afresh); raise
    EvaluationError when it holds one that cannot be resumed. Writes nothing."""
    if overwrite:
        return False
    settings_path = out / SETTINGS_FILE
    if settings_path.is_file():
        changed = _differences(json.loads(settings_path.read_text()), json.loads(json.dumps(settings, default=str)))
        if changed:
            raise EvaluationError(
                f"{out} holds an evaluation with other settings ({', '.join(changed[:6])}"
                f"{', ...' if len(changed) > 6 else ''} differ); resume it with the same settings, choose another "
                "--out, or pass --overwrite true to start it afresh.")
        return True
    if (out / EPISODES_FILE).exists():
        raise EvaluationError(f"{out / EPISODES_FILE} exists without {SETTINGS_FILE}; it is not an evaluation this "
                              "command can resume. Choose another --out or pass --overwrite true.")
    return False


def prepare_directory(out: Path, settings: Mapping[str, Any], overwrite: bool) -> None:
    """Create `out` with evaluation.json (after `check_directory`); with `overwrite`, delete an earlier evaluation."""
    if overwrite:
        for name in (SETTINGS_FILE, EPISODES_FILE, SUMMARY_FILE, REPORT_FILE, INVOCATIONS_FILE):
            (out / name).unlink(missing_ok=True)
        for png in (out / PLOTS_DIR).glob("*.png"):
            png.unlink()
    if check_directory(out, settings, overwrite=False):
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SETTINGS_FILE, json.dumps(json.loads(json.dumps(settings, default=str)), indent=2) + "\n")


def is_faulted(record: Mapping[str, Any]) -> bool:
    """An episode in which some backend request failed (records written before the field: any step fault)."""
    return bool(record.get("faulted", (record.get("agent_stats") or {}).get("faults", 0)))


def latest_records(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Per episode, the record that counts: a fault-free one if any (the first), else the latest faulted one;
    errored records never count."""
    chosen: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in records:
        if record.get("error") is not None:
            continue
        key = episode_key(record)
        if key not in chosen or is_faulted(chosen[key]):
            chosen[key] = dict(record)
    return chosen


def _ensure_textworld_games(units: Sequence[Unit], config: EvaluationConfig) -> None:
    """Generate (once, cached) the TextWorld games the plan needs, with a progress bar, before playing."""
    from envs.textworld import GameCache, game_seed

    cache = GameCache(config.textworld_cache_dir)
    needed = [(unit.env.partition("/")[2], index) for unit in units if family_of(unit.env) == "textworld"
              for index in unit.env_seeds]
    needed = list(dict.fromkeys(needed))
    missing = [(preset, index) for preset, index in needed
               if not (cache.game_dir(preset, game_seed(config.split, index)) / "meta.json").is_file()]
    for preset, index in tqdm(missing, desc="generating TextWorld games", unit="game", disable=not config.progress):
        cache.get(preset, game_seed(config.split, index))


def run_evaluation(config: EvaluationConfig) -> dict[str, Any]:
    """Run (or resume) the evaluation described by `config`; write and return the summary. Raises
    BackendUnavailable when the health check fails or the circuit breaker trips (finished episodes are kept)."""
    names = expand_suite(config.suite)
    resolved = agents.load_config(config.agent, config.agent_overrides)
    factory = AgentFactory(resolved, config.max_failed_rounds)
    pools: dict[str, list[Any]] = {}

    def environments(name: str, count: int) -> list[Any]:
        pool = pools.setdefault(name, [])
        while len(pool) < count:
            pool.append(envs.make(name, **config_env_options(name, config)))
        return pool[:count]

    sizes: dict[str, int | None] = {}
    resolved_options: dict[str, dict[str, Any]] = {}
    for name in names:
        first = environments(name, 1)[0]   # checks the options (BBH data, split) before anything runs
        options = {key: value for key, value in config_env_options(name, config).items() if value is not None}
        if family_of(name) == "bbh":
            sizes[name] = len(first)
            options["data_dir"] = str(first.data_dir)
        else:
            sizes[name] = None
            options["max_steps"] = first.max_steps
        if family_of(name) == "textworld":
            options["cache_dir"] = str(first.cache.directory)
        resolved_options[name] = options
    units = plan_units(names, config, sizes)
    settings = build_settings(config, names, resolved, units, resolved_options)
    out = Path(config.out) if config.out else default_out(config, names)
    episodes_path = out / EPISODES_FILE
    resuming = check_directory(out, settings, config.overwrite)

    done = latest_records(read_episodes(episodes_path)) if resuming else {}

    def settled(key: tuple[str, int, int]) -> bool:
        return key in done and (config.keep_faulted or not is_faulted(done[key]))

    pending = [unit for unit in units if not all(settled(key) for key in unit.keys())]
    planned = sum(len(unit.episodes) for unit in units)
    try:
        if pending:   # nothing is written before the agent, its backend and its context are known to work
            factory.prepare()
            if factory.context_s is not None and config.progress:
                print(f"bwarea evaluate: the agent's context took {factory.context_s:.1f} s (reading step or cache); "
                      "step latencies exclude it.", file=sys.stderr)
            errors = getattr(factory.context, "errors", None)
            if errors:
                print(f"bwarea evaluate: {len(errors)} request(s) of the reading step failed (e.g. {errors[0]}); the "
                      "context is incomplete and was not cached.", file=sys.stderr)
        prepare_directory(out, settings, config.overwrite)
        repair_torn_line(episodes_path)
        if any(family_of(unit.env) == "textworld" for unit in pending):
            _ensure_textworld_games(pending, config)
    except BaseException:
        factory.close()
        _close_all(pools)
        raise

    started, steps_played, episodes_played, mismatches = time.perf_counter(), 0, 0, 0
    counters = {"steps": 0, "parsed": 0, "fallbacks": 0, "faults": 0}
    progress = tqdm(total=planned, initial=sum(settled(key) for unit in units for key in unit.keys()),
                    desc="evaluate", unit="episode", disable=not config.progress)

    def on_step(traces: Sequence[agents.StepTrace]) -> None:
        for trace in traces:
            counters["steps"] += 1
            counters["parsed"] += trace.provenance in ("exact", "word", "fuzzy", "choice")
            counters["fallbacks"] += trace.fallback
            counters["faults"] += bool(trace.faults)
        progress.set_postfix_str(f"step {counters['steps']}, parsed {counters['parsed']}, "
                                 f"fallbacks {counters['fallbacks']}, faults {counters['faults']}")

    def on_episode(record: dict[str, Any]) -> None:
        nonlocal steps_played, episodes_played, mismatches
        key = episode_key(record)
        steps_played += record["steps"]
        if settled(key):
            if not same_outcome(done[key], record):
                mismatches += 1
                tqdm.write(f"bwarea evaluate: re-played episode {key} differs from its record (the agent is not "
                           "deterministic per batch); keeping the recorded one.", file=sys.stderr)
            return
        append_line(episodes_path, record)
        episodes_played += 1
        if record.get("error") is None:
            done[key] = record
            progress.update(1)
            if record["faulted"]:
                tqdm.write(f"bwarea evaluate: episode {key} had backend faults ({len(record['faults'])}); the next run "
                           "replays it (--keep_faulted true keeps it).", file=sys.stderr)
        else:
            tqdm.write(f"bwarea evaluate: episode {key} failed: {record['error']}", file=sys.stderr)

    try:
        for unit in pending:
            play_batch(factory.make(unit), environments(unit.env, len(unit.episodes)), unit, config.traces, on_episode,
                       on_step)
    finally:
        progress.close()
        factory.close()
        _close_all(pools)
        elapsed = time.perf_counter() - started
        if pending:
            append_line(out / INVOCATIONS_FILE, {
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "wall_s": round(elapsed, 3), "episodes": episodes_played, "steps": steps_played,
                "steps_per_s": round(steps_played / elapsed, 2) if elapsed > 0 else None,
                "context_s": None if factory.context_s is None else round(factory.context_s, 3),
                "replayed_mismatches": mismatches})

    planned_keys = [key for unit in units for key in unit.keys()]
    records = [done[key] for key in planned_keys if key in done]
    failed = {episode_key(r): r for r in read_episodes(episodes_path) if r.get("error") is not None}
    records += [failed[key] for key in planned_keys if key not in done and key in failed]
    summary = summarize(records, settings)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / REPORT_FILE, render_report(summary))
    if config.plots:
        from training.plots import plot_evaluation
        plot_evaluation(summary, out / PLOTS_DIR)
    return summary


def _close_all(pools: Mapping[str, list[Any]]) -> None:
    for pool in pools.values():
        for env in pool:
            env.close()


def evaluate(agent_config: str | Mapping[str, Any], suite: Sequence[str], episodes: int = 10,
             seeds: Sequence[int] = (0,), out_dir: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate an agent (bundled config name, YAML path or mapping) on `suite` and return the summary dict.

    `options` are the other EvaluationConfig fields: first_episode, split ("test"), max_steps, batch_size (8),
    agent_overrides, textworld_cache_dir, bbh_data_dir, bbh_shots, bbh_split_seed, traces ("full" / "compact" /
    "none"), plots (True), overwrite (False), progress (True). Files go to `out_dir` (see the module docstring).
    """
    known = {f.name for f in dataclasses.fields(EvaluationConfig)} - {"agent", "suite", "episodes", "seeds", "out"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"evaluate() got unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
    agent = dict(agent_config) if isinstance(agent_config, Mapping) else str(agent_config)
    config = EvaluationConfig(agent=agent, suite=list(suite), episodes=episodes, seeds=list(seeds),
                              out=None if out_dir is None else str(out_dir), **options)
    return run_evaluation(config)


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser() -> ArgumentParser:
    defaults = EvaluationConfig()
    parser = ArgumentParser(prog="bwarea evaluate", description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML file with any of the options below (ready suites: configs/evaluate/*.yaml).")
    parser.add_argument("--agent", type=str | dict, default=defaults.agent,
                        help="Agent config: a name in configs/agents (random, walkthrough, spring, textworld_dag, "
                             "bbh_dag, direct, own_model), a YAML path, or a mapping in a --config file.")
    parser.add_argument("--agent_overrides", type=dict, default={},
                        help='Deep-merged into the agent config, e.g. \'{"backend": {"model": "runs/x/export"}}\'.')
    parser.add_argument("--suite", type=str, nargs="+", default=defaults.suite,
                        help="Environment names (textworld/<preset>, crafter, bbh/<task>) or glob patterns (bbh/*).")
    parser.add_argument("--episodes", type=int, default=defaults.episodes,
                        help="Episodes per environment and seed (BIG-Bench Hard: items, at most the split's size).")
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds,
                        help="Evaluation seeds: each plays every episode once, seeding the agent's sampling.")
    parser.add_argument("--first_episode", type=int, default=defaults.first_episode,
                        help="Index of the first episode (TextWorld game / BBH item / Crafter world in the split).")
    parser.add_argument("--split", type=str, default=defaults.split,
                        help="Held-out episodes by default: test. TextWorld and Crafter: train / validation / test; "
                             "BIG-Bench Hard: train / test / all.")
    parser.add_argument("--max_steps", type=int | None, default=defaults.max_steps,
                        help="Step limit per episode (default: each environment's own: TextWorld per preset, "
                             "Crafter 10000).")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size,
                        help="Environments played side by side with one batched agent call per step.")
    parser.add_argument("--out", type=str | None, default=None,
                        help="Output directory (default runs/evaluate/<agent>-<hash of the settings>). Re-running "
                             "with the same settings resumes it.")
    parser.add_argument("--textworld_cache_dir", type=str | None, default=None,
                        help="TextWorld game cache (default $BWAREA_CACHE_DIR/textworld or ~/.cache/bwarea/textworld).")
    parser.add_argument("--bbh_data_dir", type=str | None, default=None,
                        help="BIG-Bench Hard copy (tasks/, cot-prompts/); default $BWAREA_BBH_DIR.")
    parser.add_argument("--bbh_shots", type=int, default=defaults.bbh_shots,
                        help="BIG-Bench Hard prompts: 0 (zero-shot) or 3 (chain-of-thought examples).")
    parser.add_argument("--bbh_split_seed", type=int, default=defaults.bbh_split_seed,
                        help="Seed of the BIG-Bench Hard train/test split (keep it equal to fine-tuning's).")
    parser.add_argument("--traces", type=str, default=defaults.traces,
                        help="Agent traces in episodes.jsonl: full (prompts and answers), compact (answers, tokens "
                             "and latent actions, no prompts) or none.")
    parser.add_argument("--plots", type=bool, default=defaults.plots, help="Write PNG plots of the results to <out>/plots.")
    parser.add_argument("--overwrite", type=bool, default=defaults.overwrite,
                        help="Delete an earlier evaluation in --out and start afresh.")
    parser.add_argument("--progress", type=bool, default=defaults.progress,
                        help="Show progress (per environment step, with parse / fallback / fault counters).")
    parser.add_argument("--keep_faulted", type=bool, default=defaults.keep_faulted,
                        help="Keep recorded episodes that contain backend faults instead of replaying them.")
    parser.add_argument("--max_failed_rounds", type=int, default=defaults.max_failed_rounds,
                        help="Circuit breaker: stop (exit 3) after this many consecutive backend rounds in which "
                             "every request failed.")
    return parser


def parse_config(argv: list[str] | None = None) -> EvaluationConfig:
    """EvaluationConfig from command-line arguments (and --config files)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    options = {f.name: args[f.name] for f in dataclasses.fields(EvaluationConfig)}
    options["agent"] = dict(args.agent) if isinstance(args.agent, Mapping) else args.agent
    options["agent_overrides"] = dict(args.agent_overrides or {})
    return EvaluationConfig(**options)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 complete; 1 incomplete (missing, errored or, without --keep_faulted, faulted episodes);
    2 bad settings; 3 backend unavailable (health check failed or circuit breaker tripped)."""
    try:
        config = parse_config(argv)
        summary = run_evaluation(config)
    except BackendUnavailable as error:
        print(f"bwarea evaluate: {error}. Finished episodes are kept; re-run the same command once the backend "
              "works.", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, FileExistsError, yaml.YAMLError) as error:
        print(f"bwarea evaluate: {error}", file=sys.stderr)
        return 2
    print(render_report(summary).split("## Settings")[0].rstrip())
    out = Path(config.out) if config.out else default_out(config, summary["settings"]["suite"])
    print(f"\nwrote {out / SUMMARY_FILE}, {out / REPORT_FILE} and {out / EPISODES_FILE}")
    faulted = sum(entry.get("faulted", 0) for entry in summary["environments"].values())
    return 0 if summary["complete"] and (config.keep_faulted or not faulted) else 1


if __name__ == "__main__":
    sys.exit(main())
