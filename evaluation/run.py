"""Running an evaluation (`bwarea evaluate`): any agent on any suite of environments, resumable, with a report.

    bwarea evaluate --agent random --suite textworld/coin-easy crafter --episodes 10 --seeds 0 1 --out runs/eval/random
    bwarea evaluate --config configs/evaluate/textworld-coin.yaml --agent own_model \\
        --agent_overrides '{"backend": {"model": "runs/quickstart/finetune/bwarea/export"}}'
    bwarea evaluate --agent walkthrough --suite 'textworld/*-easy' --episodes 5   # names may be glob patterns

Python API (what `bwarea quickstart` calls):

    from evaluation.run import evaluate
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

Metric definitions: each family's `FAMILY.metrics` (envs/textworld.py, envs/crafter.py, envs/bbh.py); the
pieces of an evaluation: evaluation/config.py, plan.py, provenance.py, records.py, report.py; user guide:
docs/evaluation.md.
"""


from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import agents
import envs
from agents.factory import AGENTS
from common.files import DirectoryLock, atomic_write_text, check_writable
from common.progress import progress
from evaluation.config import (EPISODES_FILE, INVOCATIONS_FILE, PLOTS_DIR, REPORT_FILE, SETTINGS_FILE, SUMMARY_FILE,
                               EvaluationConfig, EvaluationError)
from evaluation.plan import Unit, env_options, expand_suite, plan_units, unit_seed
from evaluation.provenance import build_settings, canonical_sha256
from evaluation.records import (append_line, episode_key, is_faulted, latest_records, play_batch, read_episodes,
                                repair_torn_line, same_outcome)
from evaluation.report import render_report, summarize


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
        self.backend: agents.Backend | None = None
        self.context: Any = None          # what the agent's prepare() built (SPRING: a ContextResult), shared
        self.context_s: float | None = None

    def prepare(self) -> None:
        """Everything that can fail before the first episode: build an agent (checks its config), load the backend,
        health-check it, and run the agent's one-off preparation (SPRING's reading step), timed on its own."""
        agent = self.make(Unit("", 0, 0, [], []))
        if self.backend is not None:
            self.backend.check()
        start = time.perf_counter()
        self.context = agent.prepare()
        if self.context is not None:
            self.context_s = time.perf_counter() - start

    def make(self, unit: Unit) -> agents.Agent:
        overrides = {"agent": {"seed": unit_seed(unit.seed, unit.env, unit.batch)}} if self.own_seed else {}
        if not self.needs_backend:
            return agents.make_agent(self.config, overrides=overrides)
        if self.backend is None:
            self.backend = agents.make_backend(self.config["backend"])
            self.backend.max_failed_rounds = self.max_failed_rounds
        # a batch's samples must not depend on the batches before it, or a resumed run would draw differently
        self.backend.reseed(unit_seed(unit.seed, unit.env, unit.batch))
        agent = agents.make_agent(self.config, backend=self.backend, overrides=overrides)
        if self.context is not None:
            agent.context = self.context
        return agent

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def default_out(config: EvaluationConfig, names: Sequence[str]) -> Path:
    stem = Path(config.agent).stem if isinstance(config.agent, str) else "agent"
    # every setting that changes the episodes (not where files go or how progress is shown)
    shaping = {k: v for k, v in dataclasses.asdict(config).items()
               if k not in ("suite", "out", "overwrite", "progress", "plots", "textworld_cache_dir", "keep_faulted",
                            "max_failed_rounds")}
    key = canonical_sha256([shaping, list(names)])[:8]
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


class EvaluationRun:
    """One invocation of an evaluation: its plan, output directory, agents, environments and live counters.

    Built from the config, it plans and checks everything that needs no agent (suite, environments, split, output
    directory); `run()` then prepares the agent, plays the pending units and writes the summary, report and plots.
    """

    def __init__(self, config: EvaluationConfig) -> None:
        self.config = config
        self.names = expand_suite(config.suite)
        self.resolved = agents.load_config(config.agent, config.agent_overrides)
        self.factory = AgentFactory(self.resolved, config.max_failed_rounds)
        self.pools: dict[str, list[Any]] = {}
        try:
            settings = dataclasses.asdict(config)
            sizes: dict[str, int | None] = {}
            resolved_options: dict[str, dict[str, Any]] = {}
            for name in self.names:
                first = self.environments(name, 1)[0]   # checks the options (BBH data, split) before anything runs
                family = envs.family(name)
                options = {key: value for key, value in env_options(name, settings).items() if value is not None}
                resolved_options[name] = {**options, **family.resolved_options(first)}
                sizes[name] = len(first) if family.finite else None
            self.units = plan_units(self.names, config, sizes)
            self.settings = build_settings(config, self.names, self.resolved, self.units, resolved_options)
            self.out = Path(config.out) if config.out else default_out(config, self.names)
            self.episodes_path = self.out / EPISODES_FILE
            check_writable(self.out)
            self.resuming = check_directory(self.out, self.settings, config.overwrite)
            self.done = latest_records(read_episodes(self.episodes_path)) if self.resuming else {}
            self.pending = [unit for unit in self.units if not all(self.settled(key) for key in unit.keys())]
        except BaseException:
            self._close()
            raise
        self.counters = {"steps": 0, "parsed": 0, "fallbacks": 0, "faults": 0, "episodes": 0, "steps_played": 0,
                         "mismatches": 0}
        self.progress: Any = None

    def environments(self, name: str, count: int) -> list[Any]:
        """`count` environments of `name`, built once and reused by later units."""
        pool = self.pools.setdefault(name, [])
        while len(pool) < count:
            pool.append(envs.make(name, **env_options(name, dataclasses.asdict(self.config))))
        return pool[:count]

    def settled(self, key: tuple[str, int, int]) -> bool:
        """Whether an episode is recorded and kept (a faulted one is replayed unless keep_faulted)."""
        return key in self.done and (self.config.keep_faulted or not is_faulted(self.done[key]))

    def run(self) -> dict[str, Any]:
        """Play what is pending, then write and return the summary. Raises BackendUnavailable when the health check
        fails or the circuit breaker trips (finished episodes are kept)."""
        with DirectoryLock(self.out):
            try:
                if self.pending:
                    self._prepare()
                self._play()
            finally:
                self._close()
            return self._write_results()

    def _close(self) -> None:
        self.factory.close()
        for pool in self.pools.values():
            for env in pool:
                env.close()

    def _prepare(self) -> None:
        """The agent, its backend and its context must work before anything is written."""
        config = self.config
        self.factory.prepare()
        if self.factory.backend is not None and config.progress:
            print(f"bwarea evaluate: the agent's language model: {self.factory.backend.where()}", file=sys.stderr)
        if self.factory.context_s is not None and config.progress:
            print(f"bwarea evaluate: the agent's context took {self.factory.context_s:.1f} s (reading step or "
                  "cache); step latencies exclude it.", file=sys.stderr)
        errors = getattr(self.factory.context, "errors", None)
        if errors:
            print(f"bwarea evaluate: {len(errors)} request(s) of the reading step failed (e.g. {errors[0]}); the "
                  "context is incomplete and was not cached.", file=sys.stderr)
        prepare_directory(self.out, self.settings, config.overwrite)
        repair_torn_line(self.episodes_path)
        for name in dict.fromkeys(unit.env for unit in self.pending):
            family = envs.family(name)
            if family.prepare is not None:
                indices = [j for unit in self.pending if unit.env == name for j in unit.env_seeds]
                family.prepare(name.partition("/")[2], config.split, indices,
                               self.settings["environments"][name]["options"], config.progress)

    def _play(self) -> None:
        planned = sum(len(unit.episodes) for unit in self.units)
        started = time.perf_counter()
        self.progress = progress(planned, "evaluate", "episode", enabled=self.config.progress,
                                 initial=sum(self.settled(key) for unit in self.units for key in unit.keys()))
        try:
            for unit in self.pending:
                play_batch(self.factory.make(unit), self.environments(unit.env, len(unit.episodes)), unit,
                           self.config.traces, self.on_episode, self.on_step)
        finally:
            self.progress.close()
            elapsed = time.perf_counter() - started
            if self.pending:
                counters = self.counters
                append_line(self.out / INVOCATIONS_FILE, {
                    "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "wall_s": round(elapsed, 3), "episodes": counters["episodes"], "steps": counters["steps_played"],
                    "steps_per_s": round(counters["steps_played"] / elapsed, 2) if elapsed > 0 else None,
                    "context_s": None if self.factory.context_s is None else round(self.factory.context_s, 3),
                    "replayed_mismatches": counters["mismatches"]})

    def on_step(self, traces: Sequence[agents.StepTrace]) -> None:
        counters = self.counters
        for trace in traces:
            counters["steps"] += 1
            counters["parsed"] += trace.provenance in ("exact", "word", "fuzzy", "choice")
            counters["fallbacks"] += trace.fallback
            counters["faults"] += bool(trace.faults)
        self.progress.set_postfix_str(f"step {counters['steps']}, parsed {counters['parsed']}, "
                                      f"fallbacks {counters['fallbacks']}, faults {counters['faults']}")

    def on_episode(self, record: dict[str, Any]) -> None:
        key = episode_key(record)
        self.counters["steps_played"] += record["steps"]
        if self.settled(key):
            if not same_outcome(self.done[key], record):
                self.counters["mismatches"] += 1
                tqdm.write(f"bwarea evaluate: re-played episode {key} differs from its record (the agent is not "
                           "deterministic per batch); keeping the recorded one.", file=sys.stderr)
            return
        append_line(self.episodes_path, record)
        self.counters["episodes"] += 1
        if record.get("error") is None:
            self.done[key] = record
            self.progress.update(1)
            if record["faulted"]:
                tqdm.write(f"bwarea evaluate: episode {key} had backend faults ({len(record['faults'])}); the next "
                           "run replays it (--keep_faulted true keeps it).", file=sys.stderr)
        else:
            tqdm.write(f"bwarea evaluate: episode {key} failed: {record['error']}", file=sys.stderr)

    def _write_results(self) -> dict[str, Any]:
        planned_keys = [key for unit in self.units for key in unit.keys()]
        records = [self.done[key] for key in planned_keys if key in self.done]
        failed = {episode_key(r): r for r in read_episodes(self.episodes_path) if r.get("error") is not None}
        records += [failed[key] for key in planned_keys if key not in self.done and key in failed]
        summary = summarize(records, self.settings)
        atomic_write_text(self.out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        atomic_write_text(self.out / REPORT_FILE, render_report(summary))
        if self.config.plots:
            from evaluation.plots import plot_evaluation
            plot_evaluation(summary, self.out / PLOTS_DIR)
        return summary


def run_evaluation(config: EvaluationConfig) -> dict[str, Any]:
    """Run (or resume) the evaluation described by `config`; write and return the summary (see EvaluationRun)."""
    return EvaluationRun(config).run()


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
