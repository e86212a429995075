"""The run directories a viewer serves, read-only: discovered under the given roots, indexed once, read page by page.

    store = RunStore(["runs"])
    store.runs()                                  # every run, refreshed from disk (new runs, new episodes)
    run = store.get("runs/evaluate/random-1a2b")  # RunNotFound for an unknown id (and for any "..")
    run.episodes()                                # one small entry per episode line: env, seed, score, ...
    run.steps(3, start=0, count=50)               # a page of episode 3's steps, traces merged in

Three kinds of run directory are recognised (see docs/viewer.md):
- evaluation: `evaluation.json` + `episodes.jsonl`, written by `bwarea evaluate` (format bwarea-evaluation/1);
- play: `episode.json`, written by `bwarea play` or the viewer's own play page (one episode record);
- training: `logs/csv/version_*/metrics.csv`, written by `bwarea pretrain` / `bwarea finetune`.

Episodes are indexed by byte offset: each line of episodes.jsonl is read once to pick out its header
(env, seed, score, ...; `read_header` skips the trajectory and traces), later reads seek to the one line
they need. A growing file (a running
evaluation) is indexed incrementally from where the last look stopped; a line without its newline is
still being written, or was torn by a kill, and is left out until it is complete. Nothing is ever
written: the evaluation stays the only writer of its files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from common.errors import UserError
from evaluation.config import EPISODES_FILE, FORMAT, SETTINGS_FILE, SUMMARY_FILE

KNOWN_FORMATS = (FORMAT,)
PLAY_FILE = "episode.json"
METRICS_GLOB = "logs/csv/version_*/metrics.csv"
# folders inside runs that never hold runs themselves (skipped by discovery, which stays fast on big trees)
NOT_RUNS = {"checkpoints", "export", "corpus", "plots", "logs", "frames", "wandb", "__pycache__", "node_modules"}
MAX_DEPTH = 5
LIVE_WITHIN_S = 120.0          # a run whose files changed this recently is shown as live
HEADER_FIELDS = ("env", "family", "seed", "episode", "env_seed", "steps", "return", "score", "max_score", "won",
                 "lost", "correct", "terminated", "truncated", "error", "faulted", "player", "ended")
RECORD_CACHE = 8               # parsed episode records kept in memory (a 10,000-step record is a few MB)


class ViewerError(UserError):
    """A request the viewer cannot serve; `status` is the HTTP code, the message says what to do."""

    status = 400


class RunNotFound(ViewerError):
    status = 404


class BadRun(ViewerError):
    """A run directory that cannot be read as it is (unknown format version, damaged line, missing file)."""

    status = 422


@dataclass
class EpisodeEntry:
    """Where one episode's line lies in episodes.jsonl, and the header fields the lists and tables show."""

    index: int
    offset: int
    length: int
    header: dict[str, Any]
    problem: str | None = None     # why the line cannot be shown (not valid JSON), else None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, **self.header, "achievements": self.header.get("achievements", []),
                "problem": self.problem}


def _header(record: dict[str, Any]) -> dict[str, Any]:
    header = {key: record[key] for key in HEADER_FIELDS if key in record}
    if isinstance(record.get("achievements"), list):
        header["achievements"] = list(record["achievements"])
    return header


def read_header(line: bytes) -> dict[str, Any]:
    """The header fields of one episodes.jsonl line without parsing its trajectory and traces (most of its bytes).

    An episode record is one JSON object whose keys come in a fixed order: the header (env, seed, score, ...),
    "trajectory", "agent_stats", "faults", "faulted", "latent_actions", "traces" and last "error". In JSON text
    a quote inside a string is escaped, so `, "trajectory": ` can only be that key: the text before it, closed
    with a brace, is the header; the text from `"agent_stats"` to `"traces"` holds the fault fields; the last
    `"error": ` is the record's own error. Any surprise (another order, a damaged line) parses the whole line.
    """
    try:
        header_end = line.index(b', "trajectory": ')
        middle = line.index(b', "agent_stats": ', header_end)
        traces = line.index(b', "traces": ', middle)
        error = line.rindex(b', "error": ')
        if not line.rstrip().endswith(b"}") or error < traces:
            raise ValueError
        record = json.loads(line[:header_end] + b"}")
        record.update(json.loads(b"{" + line[middle + 2:traces] + b"}"))
        record["error"] = json.loads(line[error + len(b', "error": '):line.rstrip().rindex(b"}")])
    except ValueError:          # JSONDecodeError is a ValueError too
        record = json.loads(line)
    return _header(record)


def dag_parents(settings: dict[str, Any]) -> dict[str, list[str]]:
    """Node id -> the ids of the nodes whose answers it reads, from the DAG declared inline in the agent config
    that evaluation.json records ({} for agents without a DAG, or whose DAG is a file of its own)."""
    agent = ((settings.get("agent") or {}).get("config") or {}).get("agent") or {}
    dag = agent.get("dag") if isinstance(agent, dict) else None
    if isinstance(dag, dict) and isinstance(dag.get("dag"), dict):
        dag = dag["dag"]
    nodes = dag.get("nodes") if isinstance(dag, dict) else None
    return {str(node["id"]): [str(parent) for parent in node.get("parents") or []]
            for node in nodes or [] if isinstance(node, dict) and "id" in node}


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadRun(f"{path} is missing; the run directory is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRun(f"{path} is not valid JSON ({error}); the file is damaged or still being written.") from None


class Run:
    """One run directory. `kind` is "evaluation", "play" or "training"."""

    def __init__(self, run_id: str, path: Path, kind: str) -> None:
        self.id, self.path, self.kind = run_id, path, kind
        self._lock = threading.Lock()
        self._entries: list[EpisodeEntry] = []
        self._indexed_bytes = 0
        self._torn_bytes = 0
        self._records: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._settings: tuple[int | None, dict[str, Any]] | None = None   # (evaluation.json mtime, contents)

    # -- settings and summary --------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """evaluation.json, checked for a format this viewer reads (BadRun otherwise)."""
        if self.kind == "play":
            record = self._play_record()
            return {"format": "bwarea-play", "suite": [record.get("env")], "seeds": [record.get("seed", 0)],
                    "split": record.get("split"), "agent": {"type": record.get("player", "human"),
                                                            "source": record.get("agent") or "human"}}
        if self.kind != "evaluation":
            return {}
        path = self.path / SETTINGS_FILE
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if self._settings is not None and self._settings[0] == stamp:
            return self._settings[1]
        settings = _read_json(path)
        found = settings.get("format") if isinstance(settings, dict) else None
        if found not in KNOWN_FORMATS:
            raise BadRun(f"{self.path / SETTINGS_FILE} has format {found!r}, which this viewer does not read "
                         f"(it reads {', '.join(KNOWN_FORMATS)}); open it with the bwarea version that wrote it.")
        self._settings = (stamp, settings)
        return settings

    def plots(self) -> list[str]:
        """The PNG plots `bwarea evaluate` drew (paths inside the run, for /files/<run id>/<path>)."""
        return sorted(p.relative_to(self.path).as_posix() for p in (self.path / "plots").glob("*.png"))

    def summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY_FILE
        return _read_json(path) if self.kind == "evaluation" and path.is_file() else None

    def modified(self) -> float:
        """Newest modification time of the files that change while the run is going."""
        names = {"evaluation": [EPISODES_FILE, SUMMARY_FILE], "play": [PLAY_FILE]}.get(self.kind)
        paths = [self.path / name for name in names] if names else list(self.path.glob(METRICS_GLOB))
        return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)

    def describe(self) -> dict[str, Any]:
        """The runs list's row: settings in brief, metrics with standard errors, live state, problems."""
        row: dict[str, Any] = {"id": self.id, "kind": self.kind, "path": str(self.path), "problems": []}
        modified = self.modified()
        row["modified"] = modified
        row["live"] = bool(modified) and time.time() - modified < LIVE_WITHIN_S
        if self.kind == "training":
            row["logs"] = len(list(self.path.glob(METRICS_GLOB)))   # one CSV per invocation
            return row
        try:
            settings = self.settings()
        except BadRun as error:
            row["problems"].append(str(error))
            return row
        agent = settings.get("agent") or {}
        row.update(agent=agent.get("type"), agent_source=agent.get("source"), backend=agent.get("backend"),
                   model=agent.get("model"), suite=settings.get("suite", []), seeds=settings.get("seeds", []),
                   split=settings.get("split"), versions=settings.get("versions", {}),
                   families=sorted({str(name).partition("/")[0] for name in settings.get("suite", []) if name}))
        try:
            entries = self.episodes()
        except BadRun as error:
            row["problems"].append(str(error))
            entries = []
        row["episodes"] = len(entries)
        per_seed = sum(int(env.get("episodes", 0)) for env in settings.get("environments", {}).values())
        row["planned"] = per_seed * len(settings.get("seeds", [])) if self.kind == "evaluation" else 1
        if self._torn_bytes:
            row["problems"].append(f"{EPISODES_FILE} ends with an unfinished line ({self._torn_bytes} bytes, no newline): "
                                   "an episode still being written, or torn by a kill; it is left out.")
        row["problems"] += [f"episode line {e.index + 1}: {e.problem}" for e in entries if e.problem]
        try:
            summary = self.summary()
        except BadRun as error:
            row["problems"].append(str(error))
            summary = None
        if summary is not None:
            row["complete"] = summary.get("complete")
            # an evaluation that wrote its summary after its last episode has finished, however recent
            episodes = self.path / EPISODES_FILE
            if episodes.exists() and (self.path / SUMMARY_FILE).stat().st_mtime >= episodes.stat().st_mtime:
                row["live"] = False
            row["metrics"] = {name: env.get("metrics", {}) for name, env in summary.get("environments", {}).items()}
            row["aggregates"] = summary.get("aggregates", {})
        return row

    # -- episodes ---------------------------------------------------------------------------------

    def _play_record(self) -> dict[str, Any]:
        record = _read_json(self.path / PLAY_FILE)
        if not isinstance(record, dict) or "trajectory" not in record:
            raise BadRun(f"{self.path / PLAY_FILE} is not an episode record (no trajectory); it was not written by "
                         "`bwarea play` or the viewer.")
        return record

    def episodes(self) -> list[EpisodeEntry]:
        """The episode index, brought up to date with what was appended since the last call."""
        if self.kind == "play":
            record = self._play_record()
            size = (self.path / PLAY_FILE).stat().st_size
            return [EpisodeEntry(0, 0, size, _header(record))]
        if self.kind != "evaluation":
            return []
        self.settings()     # an unknown format version is refused before any line is read
        path = self.path / EPISODES_FILE
        with self._lock:
            size = path.stat().st_size if path.is_file() else 0
            if size < self._indexed_bytes:     # rewritten (--overwrite): start over
                self._entries, self._indexed_bytes, self._records = [], 0, OrderedDict()
            if size > self._indexed_bytes:
                self._index_from(path, size)
            self._torn_bytes = size - self._indexed_bytes
            return list(self._entries)

    def _index_from(self, path: Path, size: int) -> None:
        with path.open("rb") as handle:
            handle.seek(self._indexed_bytes)
            data = handle.read(size - self._indexed_bytes)
        offset = self._indexed_bytes
        end = data.rfind(b"\n") + 1          # bytes after the last newline belong to an unfinished line
        for line in data[:end].split(b"\n")[:-1]:
            if line.strip():
                entry = EpisodeEntry(len(self._entries), offset, len(line), {})
                try:
                    entry.header = read_header(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    entry.problem = f"not valid JSON ({error.__class__.__name__}); the file was edited or damaged"
                self._entries.append(entry)
            offset += len(line) + 1
        self._indexed_bytes += end

    def record(self, index: int) -> dict[str, Any]:
        """The full record of episode `index` (position in the index), parsed on first use and kept a while."""
        entries = self.episodes()
        if not 0 <= index < len(entries):
            raise RunNotFound(f"run {self.id} has no episode {index}; it has {len(entries)} (0..{len(entries) - 1}).")
        entry = entries[index]
        if entry.problem:
            raise BadRun(f"episode {index} of run {self.id} cannot be shown: line {index + 1} of {EPISODES_FILE} is "
                         f"{entry.problem}.")
        with self._lock:
            if index in self._records:
                self._records.move_to_end(index)
                return self._records[index]
        if self.kind == "play":
            record = self._play_record()
        else:
            with (self.path / EPISODES_FILE).open("rb") as handle:
                handle.seek(entry.offset)
                try:
                    record = json.loads(handle.read(entry.length))
                except (json.JSONDecodeError, UnicodeDecodeError) as error:   # its header was fine, the rest is not
                    raise BadRun(f"episode {index} of run {self.id} cannot be shown: line {index + 1} of "
                                 f"{EPISODES_FILE} is not valid JSON ({error}).") from None
        record.setdefault("trajectory", [])
        with self._lock:
            self._records[index] = record
            while len(self._records) > RECORD_CACHE:
                self._records.popitem(last=False)
        return record

    def episode(self, index: int) -> dict[str, Any]:
        """Episode `index` without its steps: header, task, outcome, per-step outline (actions, rewards) for the
        scrubber, and the settings that replaying it needs."""
        record = self.record(index)
        trajectory = record["trajectory"]
        light = {key: value for key, value in record.items() if key not in ("trajectory", "traces")}
        light["index"] = index
        light["run"] = self.id
        light["outline"] = {"rewards": [step.get("reward", 0.0) for step in trajectory],
                            "invalid": [bool(step.get("invalid_action")) for step in trajectory],
                            "achievements": [step["new_achievements"] for step in trajectory if step.get("new_achievements")],
                            "achievement_steps": [i + 1 for i, step in enumerate(trajectory) if step.get("new_achievements")]}
        light["has_traces"] = bool(record.get("traces"))
        light["dag_parents"] = dag_parents(self.settings()) if self.kind == "evaluation" else {}
        light["frames"] = record.get("family") == "crafter" and record.get("env_seed") is not None
        recorded = (self.settings().get("versions") or {}).get("crafter") if self.kind == "evaluation" else None
        installed = _installed_version("crafter")
        if light["frames"] and recorded and recorded != installed:
            light["frames_warning"] = (f"recorded with crafter {recorded}, rendered with crafter {installed}: the "
                                       "frames are re-simulated from the seed and actions and may differ.")
        return light

    def steps(self, index: int, start: int = 0, count: int = 50) -> dict[str, Any]:
        """Steps `start` .. `start + count - 1` of episode `index`. Step k is the state after k actions: the
        observation then, and the action taken from it with its reward and the agent's trace (none for the
        final state, k = len(trajectory)). Achievements and return are accumulated from the episode's start."""
        if start < 0 or count < 1 or count > 1000:
            raise ViewerError(f"steps start must be >= 0 and count 1..1000, got start={start}, count={count}.")
        record = self.record(index)
        trajectory = record["trajectory"]
        last = len(trajectory)
        if start > last:
            raise RunNotFound(f"episode {index} of run {self.id} has steps 0..{last}; step {start} does not exist.")
        traces = {int(t.get("step", -1)): t for t in record.get("traces") or [] if isinstance(t, dict)}
        achievements: list[str] = []
        total = 0.0
        for step in trajectory[:start]:
            achievements += step.get("new_achievements") or []
            total += float(step.get("reward") or 0.0)
        page = []
        for k in range(start, min(start + count, last + 1)):
            entry: dict[str, Any] = {"step": k, "return": total, "achievements": list(achievements)}
            if k < last:
                step = trajectory[k]
                entry.update(observation=step.get("observation", ""), action=step.get("action"),
                             reward=step.get("reward"), invalid_action=bool(step.get("invalid_action")),
                             new_achievements=step.get("new_achievements") or [], suggestion=step.get("suggestion"),
                             trace=traces.get(k))
                achievements += step.get("new_achievements") or []
                total += float(step.get("reward") or 0.0)
            else:
                entry.update(observation=record.get("final_observation", ""), action=None, final=True)
            page.append(entry)
        return {"run": self.id, "episode": index, "start": start, "total": last + 1, "steps": page}

    def env_options(self, env: str) -> dict[str, Any]:
        """The environment's recorded options (max_steps, ...), for replaying an episode exactly."""
        if self.kind != "evaluation":
            return {}
        environments = self.settings().get("environments", {})
        return dict((environments.get(env) or {}).get("options") or {})


@dataclass
class RunStore:
    """The runs under `roots` (directories that are runs or hold runs), found again on every `runs()` call."""

    roots: Sequence[str | os.PathLike]
    _runs: dict[str, Run] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.roots = [Path(root).expanduser().resolve() for root in self.roots]
        names = [root.name for root in self.roots]
        if len(set(names)) != len(names):   # two roots named alike: tell them apart by their parent too
            self._prefixes = [f"{root.parent.name}/{root.name}" for root in self.roots]
        else:
            self._prefixes = names

    def refresh(self) -> None:
        found: dict[str, tuple[Path, str]] = {}
        for root, prefix in zip(self.roots, self._prefixes):
            for path, kind in discover(root):
                relative = path.relative_to(root).as_posix()
                found[prefix if relative == "." else f"{prefix}/{relative}"] = (path, kind)
        with self._lock:
            for run_id in list(self._runs):
                if run_id not in found or found[run_id] != (self._runs[run_id].path, self._runs[run_id].kind):
                    del self._runs[run_id]
            for run_id, (path, kind) in found.items():
                self._runs.setdefault(run_id, Run(run_id, path, kind))

    def runs(self) -> list[Run]:
        self.refresh()
        with self._lock:
            return [self._runs[run_id] for run_id in sorted(self._runs)]

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            self.refresh()
            with self._lock:
                run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} among the runs this viewer serves (see the runs list at /).")
        return run


def run_kind(path: Path) -> str | None:
    if (path / SETTINGS_FILE).is_file() or (path / EPISODES_FILE).is_file():
        return "evaluation"
    if (path / PLAY_FILE).is_file():
        return "play"
    if (path / "logs" / "csv").is_dir():
        return "training"
    return None


def discover(root: Path) -> list[tuple[Path, str]]:
    """(directory, kind) of every run at or under `root`, at most MAX_DEPTH levels down; runs do not nest."""
    found = []
    pending = [(root, 0)]
    while pending:
        path, depth = pending.pop()
        kind = run_kind(path)
        if kind is not None:
            found.append((path, kind))
            if kind != "training":    # a fine-tuning run may hold evaluations of itself in subfolders
                continue
        if depth >= MAX_DEPTH:
            continue
        try:
            children = [child for child in path.iterdir() if child.is_dir() and not child.is_symlink()]
        except OSError:
            continue
        pending += [(child, depth + 1) for child in children
                    if child.name not in NOT_RUNS and not child.name.startswith(".")]
    return sorted(found)
