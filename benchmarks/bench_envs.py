"""Environment throughput, measured side by side in one run and printed as ratios.

1. Crafter: steps/s of the text env (descriptor observations) vs raw crafter.Env (pixel observations),
   same worlds and random actions (target >= 0.8x). The text env with pixels drawn is shown too.
2. TextWorld: steps/s on small games (coin-easy) with admissible commands, random admissible actions
   (target >= 100 steps/s), vs textworld's own env with the same infos.
3. TextWorld game generation: cold (generate + compile) vs cached (read from the cache), seconds per game.

Rounds alternate between the contenders; medians are reported.

    python benchmarks/bench_envs.py [--rounds 5] [--steps 1000] [--games 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import crafter
import numpy as np
import textworld

from timing import timed_rounds
from envs.crafter import ACTIONS, CrafterEnv
from envs.textworld import REQUESTED_INFOS, GameCache, TextWorldEnv, game_seed


def crafter_contenders(steps: int) -> dict[str, Callable[[], int]]:
    actions = np.random.default_rng(0).integers(len(ACTIONS), size=steps)

    def raw() -> int:
        env = crafter.Env(seed=1)
        env.reset()
        for action in actions:
            if env.step(int(action))[2]:
                env.reset()
        return steps

    def text(render_mode: str | None) -> Callable[[], int]:
        def run() -> int:
            env = CrafterEnv(seed=1, render_mode=render_mode)
            env.reset()
            for action in actions:
                _, _, terminated, truncated, _ = env.step(ACTIONS[action])
                if terminated or truncated:
                    env.reset()
            return steps
        return run

    return {"crafter.Env (pixels)": raw, "text env": text(None), "text env + pixels": text("rgb_array")}


def textworld_contenders(cache_dir: str, steps: int) -> dict[str, Callable[[], int]]:
    game = GameCache(cache_dir).get("coin-easy", game_seed("train", 0))

    def ours() -> int:
        rng = random.Random(0)
        env = TextWorldEnv("coin-easy", cache_dir=cache_dir)
        _, info = env.reset(seed=0)
        for _ in range(steps):
            _, _, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated or truncated:
                _, info = env.reset(seed=0)
        return steps

    def theirs() -> int:
        rng = random.Random(0)
        env = textworld.start(str(game.path), request_infos=textworld.EnvInfos(**REQUESTED_INFOS))
        state = env.reset()
        moves = 0
        for _ in range(steps):
            state, _, done = env.step(rng.choice(state.admissible_commands))
            moves += 1
            if done or moves >= 30:
                state, moves = env.reset(), 0
        env.close()
        return steps

    return {"textworld.start env": theirs, "bwarea TextWorldEnv": ours}


def generation_times(cache_dir: str, games: int) -> tuple[float, float]:
    """Median seconds per coin-easy game: generated into an empty cache, then read back from it."""
    cold, warm = [], []
    cache = GameCache(cache_dir)
    for index in range(1, games + 1):
        start = time.perf_counter()
        assert not cache.get("coin-easy", game_seed("train", index)).from_cache
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        env = TextWorldEnv("coin-easy", cache_dir=cache_dir)
        env.reset(seed=index)
        assert env.game.from_cache
        warm.append(time.perf_counter() - start)
        env.close()
    return statistics.median(cold), statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Alternating timing rounds per contender.")
    parser.add_argument("--steps", type=int, default=1000, help="Environment steps per round.")
    parser.add_argument("--games", type=int, default=3, help="Games generated for the cold/cached comparison.")
    args = parser.parse_args()

    crafter_rates = timed_rounds(crafter_contenders(args.steps), args.rounds)
    raw = crafter_rates["crafter.Env (pixels)"]
    print("Crafter steps/s (median of rounds)")
    for name, rate in crafter_rates.items():
        print(f"  {name:<24} {rate:8.0f}   {rate / raw:5.2f}x raw crafter.Env")
    print(f"  -> text env / raw: {crafter_rates['text env'] / raw:.2f}x (target >= 0.80x)")

    with tempfile.TemporaryDirectory() as cache_dir:
        tw_rates = timed_rounds(textworld_contenders(cache_dir, args.steps), args.rounds)
        theirs = tw_rates["textworld.start env"]
        print("TextWorld steps/s, coin-easy, random admissible commands (median of rounds)")
        for name, rate in tw_rates.items():
            print(f"  {name:<24} {rate:8.0f}   {rate / theirs:5.2f}x textworld.start")
        print(f"  -> bwarea TextWorldEnv: {tw_rates['bwarea TextWorldEnv']:.0f} steps/s (target >= 100)")
        cold, warm = generation_times(cache_dir, args.games)
        print("TextWorld game (coin-easy), seconds per game (median)")
        print(f"  cold (generate + compile) {cold:8.3f}")
        print(f"  cached (load + reset)     {warm:8.3f}   cold / cached = {cold / warm:.0f}x")


if __name__ == "__main__":
    main()
