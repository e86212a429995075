"""Shared fixtures: the BBH data directory, a session cache of a few small TextWorld games, one Crafter env
and a Crafter "sandbox" (a world of sand with nothing in it, for executing rules one at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BBH_DIR = (REPO / ".." / "shared" / "data" / "bbh").resolve()
# (preset, train index) of the games generated once per test session; the first two share a preset.
SESSION_GAMES = [("coin-easy", 0), ("coin-easy", 1), ("treasure-easy", 0), ("cooking-easy", 0), ("custom-easy", 0)]


@pytest.fixture(scope="session")
def bbh_dir() -> Path:
    if not (BBH_DIR / "tasks").is_dir():
        pytest.fail(f"the BIG-Bench Hard copy is expected at {BBH_DIR} (tasks/, cot-prompts/)")
    return BBH_DIR


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory) -> Path:
    """A TextWorld cache holding SESSION_GAMES (generated here, once)."""
    from envs.textworld import GameCache, game_seed

    directory = tmp_path_factory.mktemp("textworld-cache")
    cache = GameCache(directory)
    for preset, index in SESSION_GAMES:
        assert not cache.get(preset, game_seed("train", index)).from_cache
    return directory


@pytest.fixture(scope="session")
def crafter_env():
    from envs.crafter import CrafterEnv

    return CrafterEnv(seed=0)


def _sandbox(env, facing=(0, 1), inventory: dict | None = None, material: str = "sand", pos=(32, 32)):
    """Reset `env`, turn the whole world into `material` with no creatures, put the player at `pos`."""
    env.reset(seed=0)
    engine = env.engine
    world, player = engine._world, engine._player
    for obj in world.objects:
        if obj is not player:
            world.remove(obj)
    for x in range(world.area[0]):
        for y in range(world.area[1]):
            world[(x, y)] = material
    if tuple(player.pos) != tuple(pos):
        world.move(player, pos)
    player.facing = tuple(facing)
    for name in player.inventory:
        if name not in ("health", "food", "drink", "energy"):
            player.inventory[name] = 0
    player.inventory.update(inventory or {})
    return engine


@pytest.fixture
def sandbox(crafter_env):
    """sandbox(facing=..., inventory=..., material=..., pos=...) -> the crafter engine, ready for env.step."""
    return lambda **kwargs: _sandbox(crafter_env, **kwargs)
