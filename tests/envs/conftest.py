"""Environment-test fixtures: one Crafter env and a Crafter "sandbox" (a world of sand with nothing in it,
for executing rules one at a time). The BBH directory and the TextWorld game cache live in tests/conftest.py."""

from __future__ import annotations


import pytest

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
