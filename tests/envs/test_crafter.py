import math

import crafter
import numpy as np
import pytest
from crafter import objects

import envs
from envs.crafter import (ACHIEVEMENTS, ACTION_ALIASES, ACTIONS, COMPASS, ENGINE_ACTIONS, CrafterEnv, crafter_score,
                          direction, parse_action, success_rates, visible)
from envs.crafter_explorer import CrafterExplorer


def _state(env):
    world, player = env.engine._world, env.engine._player
    return (world._mat_map.tobytes(), [(type(o).__name__, tuple(o.pos), o.health) for o in world.objects],
            dict(player.inventory), tuple(player.facing), player.sleeping)


def test_same_seed_same_game_with_or_without_pixels_day_and_night(crafter_env):
    """Two envs (one drawing crafter's images, which draws night noise from the world's generator) replay
    the same game from one seed: objects, materials and player, step by step, across a night."""
    pixels = CrafterEnv(seed=0, render_mode="rgb_array")
    _, info = crafter_env.reset(seed=3)
    assert pixels.reset(seed=3)[1] == info and _state(pixels) == _state(crafter_env)
    assert pixels.render().shape == (64, 64, 3)
    rng = np.random.default_rng(0)
    night_steps = 0
    for _ in range(320):
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        result = crafter_env.step(action)
        assert pixels.step(action) == result
        assert _state(pixels) == _state(crafter_env)
        night_steps += result[4]["daylight"] < 0.5
        if result[2] or result[3]:
            break
    assert night_steps > 20


def test_first_world_matches_raw_crafter(crafter_env):
    raw = crafter.Env(seed=5)
    raw.reset()
    crafter_env.reset(seed=5)
    assert np.array_equal(raw._world._mat_map, crafter_env.engine._world._mat_map)
    assert [tuple(o.pos) for o in raw._world.objects] == [tuple(o.pos) for o in crafter_env.engine._world.objects]


def test_reset_with_a_seed_repeats_the_world(crafter_env):
    first, _ = crafter_env.reset(seed=11)
    world = crafter_env.engine._world._mat_map.copy()
    crafter_env.reset(seed=12)
    again, _ = crafter_env.reset(seed=11)
    assert first == again and np.array_equal(world, crafter_env.engine._world._mat_map)


def _reference_view(world, center):
    """Brute force: every cell of the 9x7 view inside the world -> {name: (distance, set of directions)}."""
    best = {}
    for dx in range(-4, 5):
        for dy in range(-3, 4):
            x, y = center[0] + dx, center[1] + dy
            if (dx, dy) == (0, 0) or not (0 <= x < world.area[0] and 0 <= y < world.area[1]):
                continue
            material, obj = world[(x, y)]
            name = ("ripe plant" if obj.ripe else "plant") if isinstance(obj, objects.Plant) else \
                type(obj).__name__.lower() if obj else material
            dist = abs(dx) + abs(dy)
            if name not in best or dist < best[name][0]:
                best[name] = (dist, {direction(dx, dy)})
            elif dist == best[name][0]:
                best[name][1].add(direction(dx, dy))
    return best


EDGES = {"north-west corner": (0, 0), "north-east corner": (63, 0), "south-west corner": (0, 63),
         "south-east corner": (63, 63), "west edge": (0, 30), "east edge": (63, 30), "north edge": (30, 0),
         "south edge": (30, 63), "one in from the west": (1, 2)}


@pytest.mark.parametrize("where", EDGES)
def test_descriptor_is_correct_at_edges_and_corners(crafter_env, where):
    crafter_env.reset(seed=4)
    engine = crafter_env.engine
    world, player = engine._world, engine._player
    pos = EDGES[where]
    if world[pos][1] is not None:
        world.remove(world[pos][1])
    world.move(player, pos)
    world.add(objects.Cow(world, (pos[0] + (1 if pos[0] < 32 else -1), pos[1])))  # a creature next to the player
    reference = _reference_view(world, pos)
    seen = visible(world, player.pos)
    assert {name for name, _, _ in seen} == set(reference)
    for name, dist, where_to in seen:
        assert dist == reference[name][0] and where_to in reference[name][1], name
    assert ("cow", 1) in {(name, dist) for name, dist, _ in seen}
    # facing out of the world
    player.facing = (-1, 0) if pos[0] == 0 else (1, 0) if pos[0] == 63 else (0, -1) if pos[1] == 0 else (0, 1)
    obs, _, _, _, info = crafter_env.step("noop")
    if where != "one in from the west":
        assert "You face the edge of the world." in obs
    for name, dist, where_to in visible(world, player.pos):
        assert f"- {name} {dist} step{'s' if dist > 1 else ''} to your {where_to}" in obs


def test_descriptor_reports_vitals_inventory_state_and_extras(sandbox, crafter_env):
    engine = sandbox(facing=(1, 0), inventory={"wood": 3, "sapling": 1, "food": 4})
    world, player = engine._world, engine._player
    world[(33, 32)] = "table"
    world[(30, 30)] = "tree"
    obs, _, _, _, info = crafter_env.step("Move Right")  # blocked by the table: only turns
    assert "You face table at your front." in obs
    assert "- table 1 step to your east" in obs and "- tree 4 steps to your north-west" in obs
    assert "Your vitals: health 9/9, food 4/9, drink 9/9, energy 9/9." in obs
    assert "Your inventory: sapling 1, wood 3." in obs
    assert "Your last action: move east." in obs         # compass names, as the observation speaks
    assert "It is day." in obs and "Within crafting range: table." in obs and "Achievements so far: none." in obs
    player.inventory["energy"] = 3
    obs, *_ = crafter_env.step("sleep")
    assert "You are sleeping." in obs
    plain = CrafterEnv(seed=0, extras=False)
    obs, _ = plain.reset(seed=0)
    assert "It is day" not in obs and "Achievements" not in obs and "You have not acted yet." in obs


def test_actions_parse_tolerantly_and_bad_ones_become_noop(sandbox, crafter_env):
    assert parse_action("move_left") == (1, True) == parse_action("move west")
    for text, name in [("Move West", "move west"), ("  MOVE_UP. ", "move north"), ("go south", "move south"),
                       ("Action: Do", "do"), ("place the table", "place_table"),
                       ("craft a wooden pickaxe", "make_wood_pickaxe"), ("Make Iron Sword", "make_iron_sword"),
                       ("noop", "noop"), ("11", "make_wood_pickaxe"), ("plant sapling", "place_plant")]:
        assert parse_action(text) == (ACTIONS.index(name), True), text
    assert len(ACTIONS) == 17 and len(ACHIEVEMENTS) == 22
    assert ACTIONS[1:5] == ("move west", "move east", "move north", "move south")

    engine = sandbox()
    start = tuple(engine._player.pos)
    for bad in ["fly to the moon", "", "move diagonally", "17", "do do"]:
        obs, reward, terminated, truncated, info = crafter_env.step(bad)
        assert info["invalid_action"] and info["action"] == "noop" and tuple(engine._player.pos) == start, bad
        assert "Your last action: noop." in obs


def test_every_alias_names_its_action_and_old_names_still_play(crafter_env):
    for alias, name in ACTION_ALIASES.items():
        assert name in ACTIONS and parse_action(alias) == (ACTIONS.index(name), True), alias
    for old, new in COMPASS.items():
        assert ACTION_ALIASES[old.replace("_", " ")] == new and ENGINE_ACTIONS[ACTIONS.index(new)] == old
    crafter_env.reset(seed=0)
    *_, info = crafter_env.step("move_left")
    assert info["action"] == "move west" and not info["invalid_action"]
    assert info["action_aliases"] == ACTION_ALIASES


def test_scripted_sequence_unlocks_wood_table_and_pickaxe(sandbox, crafter_env):
    engine = sandbox(facing=(-1, 0))
    world = engine._world
    for x in (29, 30, 31):
        world[(x, 32)] = "tree"  # a row of trees to the west
    unlocked = []
    for action in ["do", "move_left", "do", "move_left", "do", "move_right", "place_table", "make_wood_pickaxe"]:
        *_, reward, terminated, truncated, info = crafter_env.step(action)
        unlocked += info["new_achievements"]
    assert unlocked == ["collect_wood", "place_table", "make_wood_pickaxe"]
    assert info["inventory"]["wood"] == 0 and info["inventory"]["wood_pickaxe"] == 1
    assert info["score"] == 3 and info["max_score"] == 22 and info["achievements"] == sorted(unlocked)


def test_explorer_unlocks_the_first_tech_tree_steps_in_a_generated_world(crafter_env):
    crafter_env.reset(seed=0)
    explorer = CrafterExplorer(np.random.default_rng(0), epsilon=0.0)
    taken = []
    for _ in range(150):
        taken.append(explorer.act(crafter_env))
        *_, terminated, truncated, info = crafter_env.step(taken[-1])
        if {"collect_wood", "place_table", "make_wood_pickaxe"} <= set(info["achievements"]):
            break
    assert {"collect_wood", "place_table", "make_wood_pickaxe"} <= set(info["achievements"])
    assert set(taken) <= set(ACTIONS) and any(name.startswith("move ") for name in taken)   # the names agents read


def test_death_terminates_and_max_steps_truncates(sandbox, crafter_env):
    engine = sandbox()
    engine._world[(31, 32)] = "lava"
    obs, reward, terminated, truncated, info = crafter_env.step("move_left")
    assert terminated and not truncated and info["lost"] and "You are dead." in obs and reward < 0
    assert crafter_env.step("noop")[1:4] == (0.0, True, False)
    short = envs.make("crafter", max_steps=3)
    short.reset(seed=1)
    results = [short.step("noop")[3] for _ in range(3)]
    assert results == [False, False, True]


def test_crafter_score_matches_a_hand_computation():
    assert crafter_score([0.0] * 22) == 0.0
    assert crafter_score([100.0] * 22) == pytest.approx(100.0)
    # one achievement always unlocked, the rest never: (1 + 100)^(1/22) - 1
    assert crafter_score([100.0] + [0.0] * 21) == pytest.approx(101 ** (1 / 22) - 1)
    # 11 achievements at 50%, 11 at 10%: exp((11 ln 51 + 11 ln 11) / 22) - 1 = sqrt(51 * 11) - 1
    rates = dict(zip(ACHIEVEMENTS, [50.0] * 11 + [10.0] * 11))
    assert crafter_score(rates) == pytest.approx(math.sqrt(51 * 11) - 1)
    episodes = [{"collect_wood", "place_table"}, {"collect_wood"}, set(), {"collect_wood", "eat_cow"}]
    found = success_rates(episodes)
    assert found["collect_wood"] == 75.0 and found["place_table"] == 25.0 and found["eat_cow"] == 25.0
    assert sum(found.values()) == 125.0
    with pytest.raises(ValueError, match="22"):
        crafter_score([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown Crafter achievement"):
        success_rates([{"collect_gold"}])


def test_registry_batch_and_gymnasium_conformance():
    import gymnasium
    from gymnasium.utils.env_checker import check_env
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    check_env(envs.make("crafter", max_steps=50), skip_render_check=True)

    batch = envs.make_batch("crafter", 2, max_steps=2)
    observations, infos = batch.reset(seeds=[1, 2])
    assert observations[0] != observations[1]
    batch.step(["noop", "noop"])
    *_, terminated, truncated, infos = batch.step(["noop", "do"])
    assert truncated == [True, True] and batch.running == []
    vector = SyncVectorEnv([lambda: envs.make("crafter", max_steps=5)] * 2, autoreset_mode=AutoresetMode.DISABLED)
    observations, _ = vector.reset(seed=[1, 2])
    assert isinstance(vector.single_observation_space, gymnasium.spaces.Text) and len(observations) == 2
