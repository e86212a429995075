"""Episode records: how one batch of episodes is played and recorded, and the crash-safe JSONL log they go to.

episodes.jsonl is appended line by line (one write, then fsync); a torn last line, left by a kill during a
write, is ignored when reading and cut before the next append.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import agents
import envs
from agents.llm import BackendUnavailable
from common.errors import describe_error
from common.jsonable import json_default, jsonable
from evaluation.config import EvaluationError
from evaluation.plan import Unit, family_of

# info entries copied into every episode record (families add their own: EnvFamily.recorded_info); the rest, e.g.
# admissible actions, would only repeat the traces
RECORDED_INFO = ("score", "max_score", "won", "lost", "split", "index")


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
        recorded = (*RECORDED_INFO, *envs.family(self.header["env"]).recorded_info)
        record.update({key: self.info[key] for key in recorded if key in self.info})
        record.update(final_observation=self.observation, trajectory=self.trajectory, agent_stats=stats,
                      faults=self.faults, faulted=bool(self.faults),
                      latent_actions={str(k): v for k, v in sorted(self.latent_actions.items())},
                      traces=self.traces, error=self.error)
        return jsonable(record)   # plain JSON types, as read back from disk


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
# The JSONL log of episodes

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
    data = (json.dumps(record, default=json_default) + "\n").encode()
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
