"""Many environments stepped together, for rollouts that batch one language-model call over all of them.

No auto-reset: every episode ends on its own and stays ended until you reset it. Stepping a batch
steps only the running episodes; a finished one keeps returning its last observation with reward 0
and its final flags and info (its action is ignored, None is fine). RL rollouts need this exact
per-episode control: a returned episode is never silently replaced by the next one.

Why not gymnasium.vector: its vector envs return observations stacked per space, infos as a dict of
arrays with masks, and either reset finished sub-envs automatically or refuse to step them
(AutoresetMode.DISABLED). Our contract is lists (strings, info dicts with variable-length action
lists) and finished episodes that simply sit still. The single environments are plain gymnasium
envs with Text spaces, so `gymnasium.vector.SyncVectorEnv` works on them when its semantics are
what you want.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium

from common.errors import InvalidInput


class BatchEnv:
    """`reset(seeds) -> (observations, infos)`; `step(actions) -> (observations, rewards, terminated, truncated, infos)`."""

    def __init__(self, envs: Sequence[gymnasium.Env]) -> None:
        if not envs:
            raise InvalidInput("BatchEnv needs at least one environment.")
        self.envs = list(envs)
        n = len(self.envs)
        self._observations: list[str] = [""] * n
        self._infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._terminated = [False] * n
        self._truncated = [False] * n
        self._started = [False] * n

    def __len__(self) -> int:
        return len(self.envs)

    @property
    def done(self) -> list[bool]:
        """Per environment: its episode has ended (terminated or truncated) or was never started."""
        return [not started or term or trunc
                for started, term, trunc in zip(self._started, self._terminated, self._truncated)]

    @property
    def running(self) -> list[int]:
        """Indices of the environments whose episode is still going."""
        return [i for i, finished in enumerate(self.done) if not finished]

    def reset(self, seeds: Sequence[int | None] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
        """Start a new episode in every environment (`seeds[i]` for environment i; None: each env's default)."""
        seeds = [None] * len(self) if seeds is None else list(seeds)
        if len(seeds) != len(self):
            raise InvalidInput(f"reset got {len(seeds)} seeds for {len(self)} environments.")
        for i, seed in enumerate(seeds):
            self.reset_one(i, seed)
        return list(self._observations), [dict(info) for info in self._infos]

    def reset_one(self, index: int, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Start a new episode in environment `index` only."""
        observation, info = self.envs[index].reset(seed=seed)
        self._observations[index], self._infos[index] = observation, info
        self._terminated[index] = self._truncated[index] = False
        self._started[index] = True
        return observation, dict(info)

    def step(self, actions: Sequence[str | None]) -> tuple[list[str], list[float], list[bool], list[bool], list[dict[str, Any]]]:
        if len(actions) != len(self):
            raise InvalidInput(f"step got {len(actions)} actions for {len(self)} environments.")
        if not any(self._started):
            raise RuntimeError("call reset() before step().")
        rewards = [0.0] * len(self)
        for i in self.running:
            if actions[i] is None:
                raise InvalidInput(f"environment {i} is still running and needs an action, got None.")
            obs, reward, terminated, truncated, info = self.envs[i].step(actions[i])
            self._observations[i], self._infos[i] = obs, info
            self._terminated[i], self._truncated[i] = bool(terminated), bool(truncated)
            rewards[i] = float(reward)
        return (list(self._observations), rewards, list(self._terminated), list(self._truncated),
                [dict(info) for info in self._infos])

    def close(self) -> None:
        for env in self.envs:
            env.close()
