"""Pretraining corpora from TextWorld, Crafter and BIG-Bench Hard: JSONL shards plus a manifest.

Output directory:
    shard-00000.jsonl, shard-00001.jsonl, ...   one document per line:
        {"text", "source": "textworld"|"crafter"|"bbh", "kind", "game"/"seed"/"task", "dirty", "corruption", ...}
    manifest.json                               counts, characters, settings, seeds used, versions
Every shard is written to a temporary file and renamed; the manifest is written last, so a directory
with a manifest is complete.

Documents:
- TextWorld (train-split games only): one "walkthrough" episode per game, and `exploratory_per_game`
  "exploratory" episodes that follow the walkthrough with random admissible detours (look, inventory,
  examine, or a step away and back) and failed commands (a blocked direction, an object that is not
  here, a typo) together with the game's answers.
- Crafter: "explorer" episodes of the scripted player (envs/crafter_explorer.py), one per world seed.
- BBH: "zero_shot" documents, prompt + " The answer is <target>.", from the train split only.
Episodes are rendered with envs.transcript.Transcript, the format agents and rollouts use.

Dirty data: with `DirtyConfig.ratio` > 0 that fraction of documents (chosen by a seeded draw per
document) is corrupted (envs/corruption.py) and marked `"dirty": true, "corruption": <kind>`.
Generation runs in `workers` processes (results are written in job order, so the output does not
depend on the number of workers) with a progress bar.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.errors import InvalidInput, OutputExists
from common.files import atomic_write_json, atomic_write_text
from envs.corruption import CORRUPTIONS, corrupt
from envs.transcript import Transcript

FORMAT = "bwarea-corpus-v1"
SHARD_PATTERN = "shard-{:05d}.jsonl"
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}
DETOUR_VERBS = ("look", "inventory", "examine", "go")
_PREPOSITIONS = re.compile(r"\b(?:from|on|in|into|with|to)\b")


@dataclass
class TextWorldCorpusConfig:
    """Transcripts of TextWorld train-split games: walkthroughs and exploratory episodes with detours and failed
    commands.

    Args:
        presets: TextWorld presets (see envs.textworld.PRESETS).
        games: Number of games in all, taken from the presets in turn.
        first_game: Index (in the train split) of each preset's first game.
        exploratory_per_game: Exploratory episodes per game, besides the walkthrough episode.
        detour_prob: Per step of an exploratory episode, probability of a harmless admissible detour.
        failure_prob: Per step of an exploratory episode, probability of a command the game refuses.
        cache_dir: Game cache directory (default: $BWAREA_CACHE_DIR/textworld or ~/.cache/bwarea/textworld).
        seed: Seed of the exploratory choices.
    """

    presets: list[str] = field(default_factory=lambda: ["coin-easy", "treasure-easy", "cooking-easy", "custom-easy"])
    games: int = 100
    first_game: int = 0
    exploratory_per_game: int = 2
    detour_prob: float = 0.25
    failure_prob: float = 0.15
    cache_dir: str | None = None
    seed: int = 0


@dataclass
class CrafterCorpusConfig:
    """Transcripts of the scripted Crafter explorer, one episode per world seed.

    Args:
        episodes: Number of episodes (world seeds).
        first_seed: World seed of the first episode.
        max_steps: Step limit of an episode.
        epsilon: Probability that the explorer takes a random action instead of its scripted one.
        extras: Include night, stations in reach and achievements in the observations.
        seed: Seed of the explorer's random choices.
    """

    episodes: int = 100
    first_seed: int = 0
    max_steps: int = 300
    epsilon: float = 0.1
    extras: bool = True
    seed: int = 0


@dataclass
class BBHCorpusConfig:
    """BIG-Bench Hard train-split items as zero-shot question + answer documents.

    Args:
        tasks: Tasks to include (default: all 27).
        data_dir: BIG-Bench Hard directory (tasks/, cot-prompts/); default: $BWAREA_BBH_DIR.
        split_seed: Seed of the train/test split (must match evaluation's).
    """

    tasks: list[str] | None = None
    data_dir: str | None = None
    split_seed: int = 0


@dataclass
class DirtyConfig:
    ratio: float = 0.0
    corruption: list[str] = field(default_factory=lambda: ["random_tokens"])
    rate: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.corruption, str):
            self.corruption = [self.corruption]
        unknown = [kind for kind in self.corruption if kind not in CORRUPTIONS]
        if unknown or not self.corruption:
            raise InvalidInput(f"unknown corruption {unknown or self.corruption}; choose from: {', '.join(CORRUPTIONS)}.")
        if not 0.0 <= self.ratio <= 1.0:
            raise InvalidInput(f"dirty ratio must be in [0, 1], got {self.ratio}.")


@dataclass
class OutputConfig:
    """Where and how a corpus is written.

    Args:
        out: Output directory for shard-*.jsonl and manifest.json.
        shard_mb: Start a new shard after about this many MiB.
        workers: Processes generating documents in parallel.
        overwrite: Replace the shards and manifest of an existing corpus in --out.
        progress: Show a progress bar.
    """

    out: str
    shard_mb: float = 64.0
    workers: int = 1
    overwrite: bool = False
    progress: bool = True


# ----------------------------------------------------------------------------------------------
# Episodes

def _document(transcript: Transcript, source: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"text": transcript.render(), "source": source, "kind": kind, **fields, "dirty": False, "corruption": None}


def _nouns(command: str) -> list[str]:
    words = command.split(" ", 1)
    if len(words) < 2:
        return []
    return [part.strip() for part in _PREPOSITIONS.split(words[1]) if part.strip()]


def _typo(command: str, rng: np.random.Generator) -> str:
    verb, _, rest = command.partition(" ")
    if len(verb) < 2:
        return f"{verb}{verb} {rest}".strip()
    i = int(rng.integers(len(verb) - 1))
    return (verb[:i] + verb[i + 1] + verb[i] + verb[i + 2:] + (" " + rest if rest else "")).strip()


def failed_command(info: dict[str, Any], rng: np.random.Generator) -> str:
    """A command the game will refuse here: a blocked direction, taking something not here, or a typo."""
    admissible = info["admissible_actions"]
    here = " ".join(admissible)
    candidates = [f"go {direction}" for direction in DIRECTIONS if f"go {direction}" not in admissible]
    nouns = sorted({noun for command in info["walkthrough"] for noun in _nouns(command)})
    candidates += [f"take {noun}" for noun in nouns if noun not in here]
    candidates.append(_typo(admissible[int(rng.integers(len(admissible)))], rng))
    return candidates[int(rng.integers(len(candidates)))]


def _detour(info: dict[str, Any], next_command: str | None, rng: np.random.Generator) -> tuple[str, str | None] | None:
    """A harmless admissible command and, for a step away, the command that comes back."""
    options = [c for c in info["admissible_actions"] if c.split(" ", 1)[0] in DETOUR_VERBS and c != next_command]
    if not options:
        return None
    command = options[int(rng.integers(len(options)))]
    verb, _, direction = command.partition(" ")
    return command, (f"go {DIRECTIONS[direction]}" if verb == "go" and direction in DIRECTIONS else None)


def textworld_walkthrough(env, index: int) -> tuple[Transcript, dict[str, Any]]:
    """Play game `index` by its walkthrough."""
    observation, info = env.reset(seed=index)
    transcript = Transcript(info["task"], observation=observation)
    for command in info["walkthrough"]:
        observation, _, terminated, truncated, info = env.step(command)
        transcript.step(command, observation)
        if terminated or truncated:
            break
    return transcript, info


def textworld_exploratory(env, index: int, rng: np.random.Generator, detour_prob: float,
                          failure_prob: float) -> tuple[Transcript, dict[str, Any]]:
    """Play game `index` by its walkthrough with random detours and failed commands (see module docstring)."""
    observation, info = env.reset(seed=index)
    transcript = Transcript(info["task"], observation=observation)
    plan = deque(info["walkthrough"])
    while plan:
        roll = rng.random()
        detour = _detour(info, plan[0], rng) if failure_prob <= roll < failure_prob + detour_prob else None
        if roll < failure_prob:
            command = failed_command(info, rng)
        elif detour is not None:
            command, back = detour
            if back:
                plan.appendleft(back)
        else:
            command = plan.popleft()
        observation, _, terminated, truncated, info = env.step(command)
        transcript.step(command, observation)
        if terminated or truncated:
            break
    return transcript, info


def crafter_episode(env, seed: int, rng: np.random.Generator, max_steps: int,
                    epsilon: float) -> tuple[Transcript, dict[str, Any]]:
    """One episode of the scripted explorer in world `seed`, at most `max_steps` steps."""
    from envs.crafter_explorer import CrafterExplorer

    observation, info = env.reset(seed=seed)
    transcript = Transcript(info["task"], observation=observation)
    explorer = CrafterExplorer(rng, epsilon)
    for _ in range(max_steps):
        action = explorer.act(env)
        observation, _, terminated, truncated, info = env.step(action)
        transcript.step(action, observation)
        if terminated or truncated:
            break
    return transcript, info


# ----------------------------------------------------------------------------------------------
# Jobs (top-level functions so worker processes can run them)

_WORKER_ENVS: dict[tuple, Any] = {}


def _cached_env(key: tuple, build: Callable[[], Any]) -> Any:
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = build()
    return _WORKER_ENVS[key]


def textworld_job(config: TextWorldCorpusConfig, job: tuple[str, int]) -> list[dict[str, Any]]:
    """Documents of one game: (preset, index in the train split)."""
    from envs.textworld import TextWorldEnv, game_seed

    preset, index = job
    env = _cached_env(("textworld", preset, config.cache_dir),
                      lambda: TextWorldEnv(preset, split="train", cache_dir=config.cache_dir))
    seed = game_seed("train", index)
    fields = {"game": f"textworld/{preset}/train/{index}", "preset": preset, "seed": seed}
    transcript, info = textworld_walkthrough(env, index)
    documents = [_document(transcript, "textworld", "walkthrough", won=info["won"], **fields)]
    for episode in range(config.exploratory_per_game):
        rng = np.random.default_rng([config.seed, seed, episode])
        transcript, info = textworld_exploratory(env, index, rng, config.detour_prob, config.failure_prob)
        documents.append(_document(transcript, "textworld", "exploratory", won=info["won"], **fields))
    return documents


def crafter_job(config: CrafterCorpusConfig, seed: int) -> list[dict[str, Any]]:
    """The document of one explorer episode in world `seed`."""
    from envs.crafter import CrafterEnv

    env = _cached_env(("crafter", config.max_steps, config.extras),
                      lambda: CrafterEnv(max_steps=config.max_steps, extras=config.extras))
    rng = np.random.default_rng([config.seed, seed])
    transcript, info = crafter_episode(env, seed, rng, config.max_steps, config.epsilon)
    return [_document(transcript, "crafter", "explorer", seed=seed, steps=info["steps"],
                      achievements=info["achievements"], lost=info["lost"])]


def bbh_job(config: BBHCorpusConfig, task: str) -> list[dict[str, Any]]:
    """Zero-shot question + answer documents of a task's train split."""
    from envs import bbh

    documents = []
    for item in bbh.split(task, "train", config.split_seed, config.data_dir):
        text = bbh.prompt(task, item.input, 0, config.data_dir) + bbh.answer_text(item.target)
        documents.append({"text": text, "source": "bbh", "kind": "zero_shot", "task": task, "item": item.index,
                          "seed": config.split_seed, "dirty": False, "corruption": None})
    return documents


# ----------------------------------------------------------------------------------------------
# Writing

class ShardWriter:
    """Collects documents and writes `shard-NNNNN.jsonl` files of about `shard_bytes` each, atomically."""

    def __init__(self, directory: Path, shard_bytes: int) -> None:
        self.directory = directory
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._lines: list[str] = []
        self._bytes = 0
        self._characters = 0

    def add(self, document: dict[str, Any]) -> None:
        line = json.dumps(document, ensure_ascii=False)
        self._lines.append(line)
        self._bytes += len(line.encode("utf-8")) + 1
        self._characters += len(document["text"])
        if self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        name = SHARD_PATTERN.format(len(self.shards))
        atomic_write_text(self.directory / name, "\n".join(self._lines) + "\n")
        self.shards.append({"file": name, "documents": len(self._lines), "characters": self._characters})
        self._lines, self._bytes, self._characters = [], 0, 0


def _prepare_output(out: Path, overwrite: bool) -> None:
    existing = sorted(out.glob("shard-*.jsonl")) + ([out / "manifest.json"] if (out / "manifest.json").exists() else [])
    if existing and not overwrite:
        raise OutputExists(f"{out} already holds a corpus ({existing[0].name}, ...); choose another --out "
                           "or pass --overwrite true to replace it.")
    for path in existing:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _mix_dirty(document: dict[str, Any], dirty: DirtyConfig, job_index: int, doc_index: int) -> dict[str, Any]:
    if dirty.ratio <= 0.0:
        return document
    rng = np.random.default_rng([dirty.seed, job_index, doc_index])
    if rng.random() >= dirty.ratio:
        return document
    kind = dirty.corruption[int(rng.integers(len(dirty.corruption)))]
    return {**document, "text": corrupt(document["text"], kind, rng, dirty.rate), "dirty": True, "corruption": kind}


def _results(job_fn: Callable, jobs: Sequence, workers: int) -> Iterable[list[dict[str, Any]]]:
    if workers <= 1:
        yield from map(job_fn, jobs)
        return
    # spawn: workers start clean (no inherited interpreter or thread state from the parent)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(job_fn, jobs, chunksize=1)


def write_corpus(source: str, job_fn: Callable, jobs: Sequence, output: OutputConfig, dirty: DirtyConfig,
                 settings: dict[str, Any], manifest_extras: dict[str, Any], unit: str) -> dict[str, Any]:
    """Run the jobs (in parallel when output.workers > 1), write shards in job order, then the manifest."""
    out = Path(output.out).expanduser()
    _prepare_output(out, output.overwrite)
    writer = ShardWriter(out, int(output.shard_mb * 1024 * 1024))
    kinds: Counter = Counter()
    dirty_count: Counter = Counter()
    bar = tqdm(total=len(jobs), desc=f"{source} corpus", unit=unit, disable=not output.progress)
    for job_index, documents in enumerate(_results(job_fn, jobs, output.workers)):
        for doc_index, document in enumerate(documents):
            document = _mix_dirty(document, dirty, job_index, doc_index)
            kinds[document["kind"]] += 1
            if document["dirty"]:
                dirty_count[document["corruption"]] += 1
            writer.add(document)
        bar.update(1)
    bar.close()
    writer.flush()
    manifest = {
        "format": FORMAT, "source": source, "documents": sum(kinds.values()),
        "characters": sum(shard["characters"] for shard in writer.shards), "kinds": dict(sorted(kinds.items())),
        "dirty_documents": sum(dirty_count.values()), "corruptions": dict(sorted(dirty_count.items())),
        "shards": writer.shards, "settings": {**settings, "dirty": asdict(dirty), "workers": output.workers},
        **manifest_extras,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def build_textworld_corpus(config: TextWorldCorpusConfig, output: OutputConfig, dirty: DirtyConfig) -> dict[str, Any]:
    """`config.games` train games spread over the presets in turn (game j: preset j mod P, index first_game + j // P)."""
    from envs.textworld import TEXTWORLD_VERSION, game_seed, get_preset

    for preset in config.presets:
        get_preset(preset)
    if config.games < 1:
        raise InvalidInput(f"--games must be at least 1, got {config.games}.")
    jobs = [(config.presets[j % len(config.presets)], config.first_game + j // len(config.presets))
            for j in range(config.games)]
    extras = {"textworld_version": TEXTWORLD_VERSION, "split": "train",
              "games": [{"preset": preset, "index": index, "seed": game_seed("train", index)} for preset, index in jobs]}
    return write_corpus("textworld", functools.partial(textworld_job, config), jobs, output, dirty,
                        asdict(config), extras, unit="game")


def build_crafter_corpus(config: CrafterCorpusConfig, output: OutputConfig, dirty: DirtyConfig) -> dict[str, Any]:
    import importlib.metadata

    if config.episodes < 1:
        raise InvalidInput(f"--episodes must be at least 1, got {config.episodes}.")
    seeds = list(range(config.first_seed, config.first_seed + config.episodes))
    extras = {"crafter_version": importlib.metadata.version("crafter"), "seeds": seeds}
    return write_corpus("crafter", functools.partial(crafter_job, config), seeds, output, dirty,
                        asdict(config), extras, unit="episode")


def build_bbh_corpus(config: BBHCorpusConfig, output: OutputConfig, dirty: DirtyConfig) -> dict[str, Any]:
    from envs import bbh

    root = bbh.resolve_data_dir(config.data_dir)
    config = BBHCorpusConfig(list(config.tasks or bbh.TASKS), str(root), config.split_seed)
    items = {task: [item.index for item in bbh.split(task, "train", config.split_seed, root)] for task in config.tasks}
    canary = json.loads((root / "tasks" / f"{config.tasks[0]}.json").read_text()).get("canary")
    extras = {"split": "train", "train_items": items, "bbh_canary": canary}
    return write_corpus("bbh", functools.partial(bbh_job, config), config.tasks, output, dirty,
                        asdict(config), extras, unit="task")


def read_documents(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every document of a corpus directory, shards in order (for inspection and tests)."""
    directory = Path(directory)
    documents = []
    for shard in sorted(directory.glob("shard-*.jsonl")):
        documents += [json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines() if line]
    return documents
