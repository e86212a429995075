"""A Crafter manual generated from crafter's own rules data, for SPRING-style agents.

`build_manual()` renders, deterministically, what each action needs and gives, what collecting each
material needs and leaves behind, costs and where things may be placed, which stations must be
nearby, the tech tree (everything each achievement needs first, by closure over the rules) with the
raw materials each achievement costs from scratch, and a few lines on survival. The rules come from
`crafter/data.yaml` as crafter loads it (`crafter.constants`); the survival lines describe dynamics
hard-coded in crafter's engine and are stated from `SURVIVAL` below. tests/envs/test_crafter_manual.py
executes every stated cost, requirement and survival number in the engine.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from dataclasses import dataclass

from crafter import constants

from common.errors import InvalidInput
from envs.crafter import ACHIEVEMENTS, ACTIONS, COMPASS

STATIONS = tuple(constants.place)  # things that can be placed: stone, table, furnace, plant
# Achievements whose prerequisites come from the engine rather than data.yaml: a plant only exists
# once a sapling has been placed.
ENGINE_PREREQUISITES = {"eat_plant": ("place_plant",)}


@dataclass(frozen=True)
class Survival:
    """Numbers hard-coded in crafter's engine (objects.py), each checked by a test that runs the engine."""

    food_every: int = 26            # steps awake per lost food point
    food_every_asleep: int = 51
    drink_every: int = 21           # steps awake per lost drink point
    drink_every_asleep: int = 41
    energy_every: int = 31          # steps awake per lost energy point
    sleep_energy_every: int = 11    # steps asleep per regained energy point
    regen_every: int = 26           # steps awake per regained health point while fed, watered and rested
    regen_every_asleep: int = 13
    starve_every: int = 16          # steps awake per lost health point while food, drink or energy is 0
    cow_health: int = 3
    cow_food: int = 6
    plant_food: int = 4
    plant_ripe_after: int = 300     # steps of growth; ripe once it has grown longer than this
    zombie_health: int = 5
    skeleton_health: int = 3
    zombie_damage: int = 2
    zombie_damage_asleep: int = 7
    zombie_attack_every: int = 6
    arrow_damage: int = 2
    day_length: int = 300
    darkest_step: int = 210         # step of each day with the least daylight
    damage_by_sword: tuple[tuple[str, int], ...] = (("none", 1), ("wood_sword", 2), ("stone_sword", 3), ("iron_sword", 5))


SURVIVAL = Survival()


def _join(words: list[str], conjunction: str = "and") -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _amounts(uses: dict[str, int]) -> str:
    return _join([f"{count} {name.replace('_', ' ')}" for name, count in uses.items()])


def _things(names: list[str] | tuple[str, ...], conjunction: str = "or") -> str:
    return _join([name.replace("_", " ") for name in names], conjunction)


def _stations(names: list[str]) -> str:
    return _join([_a(name.replace("_", " ")) for name in names])


def _source_of(item: str) -> str:
    """The material that gives `item` when collected."""
    return next(material for material, rule in constants.collect.items() if item in rule["receive"])


def prerequisites(achievement: str) -> list[str]:
    """Every achievement that must come before `achievement`, by closure over the rules, in build order."""
    order: list[str] = []

    def need(name: str) -> None:
        for parent in _direct_prerequisites(name):
            if parent not in order:
                need(parent)
                if parent not in order:
                    order.append(parent)

    need(achievement)
    return order


def _direct_prerequisites(achievement: str) -> list[str]:
    kind, _, thing = achievement.partition("_")
    if achievement in ENGINE_PREREQUISITES:
        return list(ENGINE_PREREQUISITES[achievement])
    if kind == "collect" and thing in {item for rule in constants.collect.values() for item in rule["receive"]}:
        return [f"make_{tool}" for tool in constants.collect[_source_of(thing)]["require"]]
    if kind == "place":
        return [f"collect_{item}" for item in constants.place[thing]["uses"]]
    if kind == "make":
        rule = constants.make[thing]
        return [f"place_{station}" for station in rule["nearby"]] + [f"collect_{item}" for item in rule["uses"]]
    return []


def build_plan(achievement: str) -> tuple[Counter, list[str]]:
    """Raw materials needed from an empty inventory to unlock a place_* or make_* achievement, and the
    steps in order: "collect_<item>" (one unit, with the tools it needs already made) and the place/make
    actions. Each tool and station is made once; stone and saplings are used up when placed."""
    kind, _, goal = achievement.partition("_")
    if kind not in ("place", "make"):
        raise InvalidInput(f"build_plan covers place_* and make_* achievements, not {achievement!r}.")
    raw: Counter = Counter()
    owned: set[str] = set()
    steps: list[str] = []

    def gather(item: str, count: int) -> None:
        for tool in constants.collect[_source_of(item)]["require"]:
            acquire("make", tool)
        raw[item] += count
        steps.extend([f"collect_{item}"] * count)

    def acquire(action_kind: str, thing: str) -> None:
        if thing in owned:
            return
        rule = constants.place[thing] if action_kind == "place" else constants.make[thing]
        for station in rule.get("nearby", []):
            acquire("place", station)
        for item, count in rule["uses"].items():
            gather(item, count)
        if action_kind == "make" or thing in ("table", "furnace"):
            owned.add(thing)
        steps.append(f"{action_kind}_{thing}")

    acquire(kind, goal)
    return raw, steps


def _action_lines() -> list[str]:
    walkable = _things(constants.walkable)
    blocking = _things([m for m in constants.materials if m not in constants.walkable and m != "lava"])
    moves = [name for name in ACTIONS if name in COMPASS.values()]   # the action names agents use
    lines = ["- noop: do nothing for a step.",
             f"- {_join(moves)}: face that way and step into the next cell if it is {walkable} with nothing "
             f"standing on it ({blocking} block the way; stepping into lava kills you)."]
    lines.append("- do: act on the cell you face: collect its material (see Collecting), hit the creature there, "
                 "or eat the plant there if it is ripe.")
    lines.append(f"- sleep: fall asleep when energy is below 9. Asleep you ignore other actions, regain 1 energy "
                 f"every {SURVIVAL.sleep_energy_every} steps and wake up when energy is back to 9 (achievement "
                 "wake_up) or when you lose health.")
    for thing, rule in constants.place.items():
        lines.append(f"- place_{thing}: uses {_amounts(rule['uses'])}; puts a {thing} on the cell you face if it is "
                     f"{_things(rule['where'])} with nothing standing on it.")
    for tool, rule in constants.make.items():
        gives = f"{rule['gives']} {tool.replace('_', ' ')}"
        lines.append(f"- make_{tool}: uses {_amounts(rule['uses'])}; needs {_stations(rule['nearby'])} "
                     f"nearby; gives {gives}.")
    return lines


def _collect_lines() -> list[str]:
    lines = []
    for material, rule in constants.collect.items():
        needs = f"needs {_stations(list(rule['require']))}" if rule["require"] else "needs nothing"
        chance = rule.get("probability", 1)
        gives = _amounts(rule["receive"]) + (f" with probability {chance:.0%}" if chance < 1 else "")
        after = f"the {material} stays" if rule["leaves"] == material else f"the cell becomes {rule['leaves']}"
        lines.append(f"- {material}: {needs}; gives {gives}; {after}.")
    return lines


def _tech_tree_lines() -> list[str]:
    lines = []
    for achievement in ACHIEVEMENTS:
        before = prerequisites(achievement)
        line = f"- {achievement}: " + (f"first {', '.join(before)}." if before else "no prerequisite.")
        if achievement.startswith(("place_", "make_")):
            raw, _ = build_plan(achievement)
            in_item_order = {item: raw[item] for item in constants.items if raw[item]}
            line += f" From scratch: {_amounts(in_item_order)}."
        lines.append(line)
    return lines


def _survival_lines() -> list[str]:
    s = SURVIVAL
    damage = _join([f"{amount} with {'no sword' if sword == 'none' else _a(sword.replace('_', ' '))}"
                    for sword, amount in s.damage_by_sword])
    return [
        f"- Awake, you lose 1 food every {s.food_every} steps, 1 drink every {s.drink_every} steps and 1 energy "
        f"every {s.energy_every} steps; asleep, 1 food every {s.food_every_asleep} steps and 1 drink every "
        f"{s.drink_every_asleep} steps.",
        f"- While food, drink and energy are all above 0, you regain 1 health every {s.regen_every} steps awake "
        f"({s.regen_every_asleep} asleep); while any of them is 0, you lose 1 health every {s.starve_every} steps "
        "awake. At 0 health you die.",
        f"- A hit does {damage} damage (the best sword you carry counts).",
        f"- A cow has {s.cow_health} health; defeating it (eat_cow) gives {s.cow_food} food.",
        f"- A placed sapling grows into a plant that is ripe after {s.plant_ripe_after} steps; eating a ripe "
        f"plant (eat_plant) gives {s.plant_food} food.",
        f"- A zombie has {s.zombie_health} health. Next to you it hits for {s.zombie_damage} damage "
        f"({s.zombie_damage_asleep} if you are asleep), at most once every {s.zombie_attack_every} steps.",
        f"- A skeleton has {s.skeleton_health} health and shoots arrows that deal {s.arrow_damage} damage.",
        f"- A day lasts {s.day_length} steps; it is darkest at step {s.darkest_step} of each day.",
    ]


def _limits_line() -> str:
    maxima = {rule["max"] for rule in constants.items.values()}
    if len(maxima) == 1:
        return f"Vitals (health, food, drink, energy) and every item count range from 0 to {maxima.pop()}."
    return "Counts range from 0 to: " + ", ".join(f"{name} {rule['max']}" for name, rule in constants.items.items()) + "."


def build_manual() -> str:
    """The manual as Markdown-like plain text (the same text on every call)."""
    sections = [
        ("Crafter manual", [
            f"Generated from the rules data of crafter {importlib.metadata.version('crafter')} (data.yaml); survival "
            "numbers come from its engine. North is up on the map, west is left.",
            _limits_line(),
            "Nearby means within the 3x3 square centred on you, diagonals included.",
        ]),
        ("Actions", _action_lines()),
        ("Collecting (face the material and use do)", _collect_lines()),
        ("Tech tree (achievements that must come first; raw materials from an empty inventory)", _tech_tree_lines()),
        ("Survival", _survival_lines()),
    ]
    return "\n\n".join(f"## {title}\n" + "\n".join(lines) for title, lines in sections) + "\n"
