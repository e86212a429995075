"""Every cost, requirement and survival number the manual states, executed in crafter's engine.

The sandbox is a world of sand without creatures (nothing spawns on sand) with the player at (32, 32);
rules are set up through the engine's own state (`_world`, `_player`) and run through env.step.
"""

from collections import Counter

import pytest
from crafter import constants, objects

from envs.crafter_manual import SURVIVAL, build_manual, build_plan, prerequisites

CENTER = (32, 32)
WEST, EAST, NORTH, SOUTH = (-1, 0), (1, 0), (0, -1), (0, 1)
MANUAL = build_manual()


def _ahead(engine):
    player = engine._player
    return (int(player.pos[0] + player.facing[0]), int(player.pos[1] + player.facing[1]))


def _run(env, actions):
    for action in actions:
        *_, info = env.step(action)
    return info


def test_manual_is_deterministic_and_states_the_rules_data():
    assert build_manual() == MANUAL
    for thing, rule in constants.place.items():
        assert f"- place_{thing}: uses {' and '.join(f'{n} {k}' for k, n in rule['uses'].items())};" in MANUAL
    for tool, rule in constants.make.items():
        assert f"- make_{tool}: uses " in MANUAL and "nearby" in MANUAL
    assert "- make_iron_pickaxe: uses 1 wood, 1 coal and 1 iron; needs a table and a furnace nearby" in MANUAL
    assert "- tree: needs nothing; gives 1 wood;" in MANUAL
    assert "- grass: needs nothing; gives 1 sapling with probability 10%; the grass stays." in MANUAL
    assert f"1 food every {SURVIVAL.food_every} steps" in MANUAL
    assert "Nearby means within the 3x3 square centred on you" in MANUAL


@pytest.mark.parametrize("thing", list(constants.place))
def test_place_costs_and_where(sandbox, crafter_env, thing):
    rule = constants.place[thing]
    allowed = rule["where"][0]
    engine = sandbox(inventory=dict(rule["uses"]))
    engine._world[_ahead(engine)] = allowed
    info = _run(crafter_env, [f"place_{thing}"])
    assert f"place_{thing}" in info["achievements"]
    assert all(info["inventory"][item] == 0 for item in rule["uses"])
    material, obj = engine._world[_ahead(engine)]
    assert (material == thing) if rule["type"] == "material" else isinstance(obj, objects.Plant)
    for item, count in rule["uses"].items():  # one short of the cost
        engine = sandbox(inventory={**rule["uses"], item: count - 1})
        engine._world[_ahead(engine)] = allowed
        assert f"place_{thing}" not in _run(crafter_env, [f"place_{thing}"])["achievements"]
    for where in ("tree", "table", "sand", "water"):
        if where not in rule["where"]:
            engine = sandbox(inventory=dict(rule["uses"]))
            engine._world[_ahead(engine)] = where
            assert f"place_{thing}" not in _run(crafter_env, [f"place_{thing}"])["achievements"], where
    engine = sandbox(inventory=dict(rule["uses"]))  # something standing there
    engine._world[_ahead(engine)] = allowed
    engine._world.add(objects.Plant(engine._world, _ahead(engine)))
    assert f"place_{thing}" not in _run(crafter_env, [f"place_{thing}"])["achievements"]


@pytest.mark.parametrize("tool", list(constants.make))
def test_make_costs_and_nearby_stations(sandbox, crafter_env, tool):
    rule = constants.make[tool]
    spots = [(33, 33), (31, 31)]  # diagonal neighbours: inside the 3x3 square

    def attempt(inventory, stations):
        engine = sandbox(inventory=inventory)
        for station, spot in zip(stations, spots):
            engine._world[spot] = station
        return _run(crafter_env, [f"make_{tool}"])

    info = attempt(dict(rule["uses"]), rule["nearby"])
    assert f"make_{tool}" in info["achievements"] and info["inventory"][tool] == rule["gives"]
    assert all(info["inventory"][item] == 0 for item in rule["uses"])
    for item, count in rule["uses"].items():
        assert f"make_{tool}" not in attempt({**rule["uses"], item: count - 1}, rule["nearby"])["achievements"]
    for missing in rule["nearby"]:
        assert f"make_{tool}" not in attempt(dict(rule["uses"]), [s for s in rule["nearby"] if s != missing])["achievements"]
    engine = sandbox(inventory=dict(rule["uses"]))  # two cells away is not nearby
    for i, station in enumerate(rule["nearby"]):
        engine._world[(34, 32 + i)] = station
    assert f"make_{tool}" not in _run(crafter_env, [f"make_{tool}"])["achievements"]


@pytest.mark.parametrize("material", [m for m in constants.collect if m != "grass"])
def test_collect_requirements_gains_and_leftovers(sandbox, crafter_env, material):
    rule = constants.collect[material]
    engine = sandbox(inventory={**rule["require"], "drink": 5}, facing=WEST)
    engine._world[_ahead(engine)] = material
    before = dict(engine._player.inventory)
    info = _run(crafter_env, ["do"])
    for item, amount in rule["receive"].items():
        assert info["inventory"][item] - before[item] == amount, item
        assert f"collect_{item}" in info["achievements"]
    assert engine._world[_ahead(engine)][0] == rule["leaves"]
    for tool in rule["require"]:
        engine = sandbox(inventory={t: n for t, n in rule["require"].items() if t != tool}, facing=WEST)
        engine._world[_ahead(engine)] = material
        info = _run(crafter_env, ["do"])
        assert not info["achievements"] and engine._world[_ahead(engine)][0] == material


def test_grass_gives_a_sapling_one_time_in_ten(sandbox, crafter_env):
    engine = sandbox(facing=WEST)
    engine._world[_ahead(engine)] = "grass"
    saplings = 0
    for _ in range(1000):
        engine._player.inventory.update(sapling=0, food=9, drink=9, energy=9)
        *_, info = crafter_env.step("do")
        saplings += info["inventory"]["sapling"]
    assert 70 <= saplings <= 130
    assert engine._world[_ahead(engine)][0] == "grass"


def test_counts_are_capped(sandbox, crafter_env):
    engine = sandbox(inventory={"wood": 9}, facing=WEST)
    engine._world[_ahead(engine)] = "tree"
    assert _run(crafter_env, ["do"])["inventory"]["wood"] == 9


@pytest.mark.parametrize("achievement", [a for a in constants.achievements if a.startswith(("place_", "make_"))])
def test_raw_materials_from_scratch_are_exactly_enough(sandbox, crafter_env, achievement):
    """Start with nothing; collect every raw unit of the plan in the engine (tools required), place stations
    around the player, make tools: the plan unlocks the achievement and uses everything it collected. With
    any one collection left out it fails."""
    raw, steps = build_plan(achievement)
    assert steps[-1] == achievement
    assert raw == Counter(step.removeprefix("collect_") for step in steps if step.startswith("collect_"))
    source = {item: material for material, rule in constants.collect.items() for item in rule["receive"]}

    def run(plan):
        engine = sandbox()
        world, player = engine._world, engine._player
        for cell in [(32, 33), (33, 32), (32, 31)]:
            world[cell] = "grass"  # room for stations, and soil for a sapling
        stations = iter([SOUTH, EAST, NORTH])
        for step in plan:
            if step.startswith("collect_"):
                item = step.removeprefix("collect_")
                player.facing = WEST
                before = player.inventory[item]
                for _ in range(200):  # saplings come one time in ten
                    world[(31, 32)] = source[item]
                    *_, info = crafter_env.step("do")
                    if player.inventory[item] > before:
                        break
                continue
            if step.startswith("place_"):
                player.facing = next(stations)
            *_, info = crafter_env.step(step)
        return info

    line = next(line for line in MANUAL.split("\n") if line.startswith(f"- {achievement}: ") and "From scratch" in line)
    assert all(f"{count} {item}" in line.split("From scratch:")[1] for item, count in raw.items())
    info = run(steps)
    assert achievement in info["achievements"]
    assert all(info["inventory"][item] == 0 for item in raw)
    for item in raw:
        last = max(i for i, step in enumerate(steps) if step == f"collect_{item}")
        assert achievement not in run(steps[:last] + steps[last + 1:])["achievements"], item


def test_prerequisite_closure():
    assert prerequisites("make_iron_pickaxe") == ["collect_wood", "place_table", "make_wood_pickaxe", "collect_stone",
                                                  "place_furnace", "collect_coal", "make_stone_pickaxe", "collect_iron"]
    assert prerequisites("eat_plant") == ["collect_sapling", "place_plant"]
    assert prerequisites("collect_drink") == [] and prerequisites("defeat_zombie") == []


def _first_change(env, engine, item, steps, action="noop"):
    start = engine._player.inventory[item]
    for step in range(1, steps + 1):
        env.step(action)
        if engine._player.inventory[item] != start:
            return step
    return None


def test_food_drink_energy_decay_awake(sandbox, crafter_env):
    for item, period in (("food", SURVIVAL.food_every), ("drink", SURVIVAL.drink_every), ("energy", SURVIVAL.energy_every)):
        engine = sandbox()
        assert _first_change(crafter_env, engine, item, 60) == period, item
        assert engine._player.inventory[item] == 8


def test_sleep_rates_waking_and_ignored_actions(sandbox, crafter_env):
    engine = sandbox(inventory={"energy": 9})
    crafter_env.step("sleep")
    assert not engine._player.sleeping  # not tired: no sleep
    engine = sandbox(inventory={"energy": 0})
    player = engine._player
    changes = {"food": None, "drink": None, "energy": None}
    start = dict(player.inventory)
    for step in range(1, 200):
        *_, info = crafter_env.step("sleep" if step == 1 else "move_left")
        assert tuple(player.pos) == CENTER or not player.sleeping
        for item in changes:
            if changes[item] is None and player.inventory[item] != start[item]:
                changes[item] = step
        if "wake_up" in info["achievements"]:
            break
    assert changes == {"food": SURVIVAL.food_every_asleep, "drink": SURVIVAL.drink_every_asleep,
                       "energy": SURVIVAL.sleep_energy_every}
    assert player.inventory["energy"] == 9 and not player.sleeping
    assert step == 9 * SURVIVAL.sleep_energy_every + 1


def test_health_regeneration_and_starvation(sandbox, crafter_env):
    engine = sandbox(inventory={"health": 5})
    assert _first_change(crafter_env, engine, "health", 40) == SURVIVAL.regen_every
    engine = sandbox(inventory={"health": 5, "energy": 5})
    assert _first_change(crafter_env, engine, "health", 40, action="sleep") == SURVIVAL.regen_every_asleep
    engine = sandbox(inventory={"food": 0})
    assert _first_change(crafter_env, engine, "health", 40) == SURVIVAL.starve_every
    assert engine._player.inventory["health"] == 8


def _penned(engine, cls, *args):
    """A creature in the cell east of the player, walled in by stone so it cannot wander off."""
    world = engine._world
    for cell in [(34, 32), (33, 31), (33, 33)]:
        world[cell] = "stone"
    creature = cls(world, (33, 32), *args)
    world.add(creature)
    engine._player.facing = EAST
    return creature


@pytest.mark.parametrize("sword,damage", SURVIVAL.damage_by_sword)
def test_hits_needed_per_sword(sandbox, crafter_env, sword, damage):
    hits = -(-SURVIVAL.zombie_health // damage)
    engine = sandbox(inventory={} if sword == "none" else {sword: 1})
    zombie = _penned(engine, objects.Zombie, engine._player)
    for hit in range(1, hits + 1):
        *_, info = crafter_env.step("do")
        assert ("defeat_zombie" in info["achievements"]) == (hit == hits)
        if hit == 1:
            assert zombie.health == max(0, SURVIVAL.zombie_health - damage)


def test_cow_and_skeleton_health_and_cow_food(sandbox, crafter_env):
    engine = sandbox(inventory={"food": 2})
    _penned(engine, objects.Cow)
    infos = [_run(crafter_env, ["do"]) for _ in range(SURVIVAL.cow_health)]
    assert [("eat_cow" in info["achievements"]) for info in infos] == [False] * (SURVIVAL.cow_health - 1) + [True]
    assert infos[-1]["inventory"]["food"] == 2 + SURVIVAL.cow_food
    engine = sandbox()
    _penned(engine, objects.Skeleton, engine._player)
    infos = [_run(crafter_env, ["do"]) for _ in range(SURVIVAL.skeleton_health)]
    assert [("defeat_skeleton" in info["achievements"]) for info in infos] == [False] * (SURVIVAL.skeleton_health - 1) + [True]


def test_zombie_damage_awake_asleep_and_attack_rhythm(sandbox, crafter_env):
    engine = sandbox()
    _penned(engine, objects.Zombie, engine._player)
    health = []
    for _ in range(9):  # before step 10, when crafter may despawn a zombie in daylight
        crafter_env.step("noop")
        health.append(engine._player.inventory["health"])
    hurt = [i + 1 for i in range(len(health)) if health[i] < (health[i - 1] if i else 9)]
    assert hurt == [1, 1 + SURVIVAL.zombie_attack_every]
    assert health[0] == 9 - SURVIVAL.zombie_damage
    engine = sandbox(inventory={"energy": 3})
    _penned(engine, objects.Zombie, engine._player)
    crafter_env.step("sleep")
    assert engine._player.inventory["health"] == 9 - SURVIVAL.zombie_damage_asleep
    crafter_env.step("sleep")
    assert not engine._player.sleeping  # woken by the hit, without the wake_up achievement
    assert engine._player.achievements["wake_up"] == 0


def test_movement_rules(sandbox, crafter_env):
    for material in constants.materials:
        engine = sandbox()
        engine._world[(31, 32)] = material
        crafter_env.step("move_left")
        moved = tuple(engine._player.pos) == (31, 32)
        assert moved == (material in constants.walkable or material == "lava"), material
        assert engine._player.facing == WEST
    engine = sandbox()
    engine._world.add(objects.Plant(engine._world, (31, 32)))
    crafter_env.step("move_left")
    assert tuple(engine._player.pos) == CENTER


def test_skeleton_shoots_arrows(sandbox, crafter_env):
    engine = sandbox()
    world = engine._world
    for cell in [(35, 32), (34, 31), (34, 33)]:
        world[cell] = "stone"
    world.add(objects.Skeleton(world, (34, 32), engine._player))
    health = [9]
    for _ in range(9):
        crafter_env.step("noop")
        health.append(engine._player.inventory["health"])
    drops = [before - after for before, after in zip(health, health[1:]) if after < before]
    assert drops and set(drops) == {SURVIVAL.arrow_damage}


def test_arrow_damage(sandbox, crafter_env):
    engine = sandbox()
    engine._world.add(objects.Arrow(engine._world, (33, 32), (-1, 0)))
    crafter_env.step("noop")
    assert engine._player.inventory["health"] == 9 - SURVIVAL.arrow_damage


def test_lava_kills(sandbox, crafter_env):
    engine = sandbox()
    engine._world[(31, 32)] = "lava"
    _, _, terminated, _, info = crafter_env.step("move_left")
    assert terminated and info["lost"] and info["inventory"]["health"] == 0


def test_plant_ripens_and_feeds(sandbox, crafter_env):
    engine = sandbox(inventory={"sapling": 1, "food": 5}, facing=WEST)
    world, player = engine._world, engine._player
    world[_ahead(engine)] = "grass"
    crafter_env.step("place_plant")
    plant = world[_ahead(engine)][1]
    assert isinstance(plant, objects.Plant)
    while plant.grown < SURVIVAL.plant_ripe_after:
        player.inventory.update(food=5, drink=9, energy=9)
        player._hunger = 0  # keep food steady so the meal is measurable
        crafter_env.step("noop")
    *_, info = crafter_env.step("do")  # grown == 300: not ripe yet
    assert "eat_plant" not in info["achievements"] and info["inventory"]["food"] == 5
    *_, info = crafter_env.step("do")
    assert "eat_plant" in info["achievements"] and info["inventory"]["food"] == 5 + SURVIVAL.plant_food


def test_day_length_and_darkest_step(sandbox, crafter_env):
    engine = sandbox()
    daylight = []
    for _ in range(2 * SURVIVAL.day_length):
        *_, info = crafter_env.step("noop")
        engine._player.inventory.update(food=9, drink=9, energy=9)
        daylight.append((info["steps"], info["daylight"]))
    by_step = dict(daylight)
    darkest = min(range(1, SURVIVAL.day_length + 1), key=by_step.get)
    assert darkest == SURVIVAL.darkest_step
    assert all(by_step[t] == pytest.approx(by_step[t + SURVIVAL.day_length]) for t in range(1, SURVIVAL.day_length))
