"""The plan of an evaluation: which environments, which episodes, with which seeds, cut into resumable units."""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import envs
from evaluation.config import EvaluationConfig, EvaluationError


def family_of(name: str) -> str:
    return name.partition("/")[0]


def expand_suite(patterns: Sequence[str]) -> list[str]:
    """Environment names from names or glob patterns ("bbh/*", "textworld/*-easy"), in order, without repeats."""
    valid = envs.names()
    names: list[str] = []
    for pattern in patterns:
        matches = [name for name in valid if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            close = difflib.get_close_matches(pattern, valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise EvaluationError(f"suite entry {pattern!r} names no environment; {hint}valid names are "
                                  f"{', '.join(envs.patterns())} (e.g. textworld/coin-easy, crafter, bbh/navigate), "
                                  "or glob patterns such as bbh/*.")
        names += [name for name in matches if name not in names]
    return names


def env_options(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of environment `name` from evaluation or play settings (split, max_steps, data paths:
    the EvaluationConfig / PlayConfig fields of those names); the family decides which it takes."""
    family = envs.family(name)
    try:
        family.check_split(name, settings.get("split", "test"))
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    return family.options(settings)


def env_seed(name: str, split: str, index: int) -> int:
    """The seed passed to `reset` for episode `index`: a game / item index, or a Crafter world seed."""
    return envs.family(name).episode_seed(split, index)


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
