"""Crafter as a text game: the SPRING/SmartPlay/BALROG-style descriptor computed from the engine's own state.

    env = envs.make("crafter", seed=0)
    obs, info = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step("move west")   # any of the 17 names or an alias

The observation lists, for every material or creature type in the 9x7 local view the player sees,
the closest instance with its Manhattan distance and compass direction (north is up on the map);
then the faced cell, the four vitals out of 9, the non-zero inventory, the last action and whether
the player sleeps or is dead. With `extras=True` (the default) it adds whether it is night, which
crafting stations are within crafting range and the achievements unlocked so far. Cells beyond the
world's edge are simply not seen, so the description stays correct at edges and corners.

Dynamics are crafter's own (a subclass of `crafter.Env`; crafter's source is never patched), with
one fix: crafter chooses which creature to despawn by position in a set ordered by memory address,
so two `crafter.Env` with the same seed drift apart after a few steps; here creatures are ordered by
map position first, so a seed and an action sequence always give the same game. Pixels are not
drawn unless asked for (`render_mode="rgb_array"`); at night crafter's renderer draws noise from the
world's random generator, and without pixels the env draws the same numbers, so the game does not
depend on whether images are drawn.

Actions: ONE table, `ACTIONS`, used by the environment, the manual, the agents' prompts and their
parser: crafter's 17 actions with the four moves named by compass direction ("move west", "move east",
"move north", "move south"), the words the observation uses. crafter's own names ("move_left", ...)
and other phrasings are aliases (`ACTION_ALIASES`, also given to agents as `info["action_aliases"]`).

Reward is crafter's: +1 the first time each achievement unlocks in an episode, plus the health
change / 10. `info["score"]` is the number of achievements unlocked this episode and
`info["max_score"]` is 22. The official Crafter score over many episodes is `crafter_score`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import crafter
import numpy as np
from crafter import constants, objects

from common.errors import InvalidInput
from common.stats import Estimate, estimate, require_fields
from envs.base import TextEnv
from envs.family import Breakdown, Column, EnvFamily, step_status

ENGINE_ACTIONS: tuple[str, ...] = tuple(constants.actions)      # crafter's names, in its index order
COMPASS = {"move_left": "move west", "move_right": "move east", "move_up": "move north", "move_down": "move south"}
ACTIONS: tuple[str, ...] = tuple(COMPASS.get(name, name) for name in ENGINE_ACTIONS)   # what agents read and write
ACHIEVEMENTS: tuple[str, ...] = tuple(constants.achievements)
VITALS = ("health", "food", "drink", "energy")
TASK = ("Survive in the open world of Crafter and unlock as many of its 22 achievements as you can: "
        "collect materials, place stations, make tools, eat, drink, sleep and defeat monsters.")
VIEW = (9, 9)             # crafter's view grid; the bottom rows show the inventory in the image
LOCAL_VIEW = (9, 7)       # the part of the map the player sees: 9 wide (west-east), 7 tall (north-south)
NIGHT_BELOW = 0.5         # daylight under which crafter's renderer darkens the view with noise


# ----------------------------------------------------------------------------------------------
# Actions: 17 names, parsed tolerantly

def _action_aliases() -> dict[str, str]:
    """alias (lower case, words separated by single spaces) -> action name in ACTIONS."""
    aliases = {name.replace("_", " "): COMPASS.get(name, name) for name in ENGINE_ACTIONS}
    aliases.update({name.replace("_", " "): name for name in ACTIONS})
    for old, move in COMPASS.items():
        direction, compass = old.removeprefix("move_"), move.removeprefix("move ")
        for phrase in (direction, compass, f"go {direction}", f"go {compass}", f"walk {direction}", f"walk {compass}"):
            aliases[phrase] = move
    for phrase in ("no op", "noop", "nothing", "wait", "idle", "do nothing", "stay"):
        aliases[phrase] = "noop"
    for phrase in ("interact", "collect", "attack", "use", "do action"):
        aliases[phrase] = "do"
    aliases["rest"] = "sleep"
    for thing in ("stone", "table", "furnace", "plant"):
        for verb in ("place", "put", "build"):
            aliases[f"{verb} {thing}"] = f"place_{thing}"
    aliases["place sapling"] = aliases["plant sapling"] = "place_plant"
    for material in ("wood", "stone", "iron"):
        for tool in ("pickaxe", "sword"):
            for verb in ("make", "craft", "build", "create"):
                aliases[f"{verb} {material} {tool}"] = f"make_{material}_{tool}"
            if material == "wood":
                for verb in ("make", "craft", "build", "create"):
                    aliases[f"{verb} wooden {tool}"] = f"make_wood_{tool}"
    return aliases


ACTION_ALIASES: dict[str, str] = _action_aliases()
_FILLER = {"a", "an", "the", "action"}


def parse_action(action: str | int) -> tuple[int, bool]:
    """(action index, understood). Case, underscores, punctuation, articles and a leading "action:" don't
    matter; index strings "0".."16" are accepted. Anything else is (noop, False)."""
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool):
        return (int(action), True) if 0 <= action < len(ACTIONS) else (0, False)
    words = [word for word in re.sub(r"[^a-z0-9]+", " ", str(action).lower().replace("_", " ")).split()
             if word not in _FILLER]
    text = " ".join(words)
    if text.isdigit() and int(text) < len(ACTIONS):
        return int(text), True
    name = ACTION_ALIASES.get(text)
    return (ACTIONS.index(name), True) if name else (0, False)


# ----------------------------------------------------------------------------------------------
# The text descriptor

def _view_cells() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Offsets of the local view's cells except the player's own, nearest first (ties: north, then west first)."""
    half_x, half_y = LOCAL_VIEW[0] // 2, LOCAL_VIEW[1] // 2
    cells = [(abs(dx) + abs(dy), dy, dx) for dx in range(-half_x, half_x + 1) for dy in range(-half_y, half_y + 1)
             if (dx, dy) != (0, 0)]
    cells.sort()
    dist = np.array([c[0] for c in cells])
    dy = np.array([c[1] for c in cells])
    dx = np.array([c[2] for c in cells])
    return dx, dy, dist, [direction(x, y) for x, y in zip(dx, dy)]


def direction(dx: int, dy: int) -> str:
    """Compass direction of an offset on crafter's map (x grows to the east, y grows to the south)."""
    parts = (["north"] if dy < 0 else ["south"] if dy > 0 else []) + (["west"] if dx < 0 else ["east"] if dx > 0 else [])
    return "-".join(parts)


_DX, _DY, _DIST, _DIRECTION = _view_cells()


def object_name(obj: objects.Object) -> str:
    if isinstance(obj, objects.Plant):
        return "ripe plant" if obj.ripe else "plant"
    return type(obj).__name__.lower()


def cell_name(world: crafter.engine.World, pos: Sequence[int]) -> str | None:
    """What occupies a map cell: a creature or plant if any, else the material; None beyond the edge."""
    material, obj = world[pos]
    if material is None:
        return None
    return object_name(obj) if obj is not None else material


def visible(world: crafter.engine.World, center: Sequence[int]) -> list[tuple[str, int, str]]:
    """(name, distance, direction) of the closest instance of every type in the local view around `center`."""
    xs, ys = _DX + center[0], _DY + center[1]
    inside = (xs >= 0) & (ys >= 0) & (xs < world.area[0]) & (ys < world.area[1])
    index = np.flatnonzero(inside)
    xs, ys = xs[index], ys[index]
    seen: dict[str, int] = {}
    object_ids = world._obj_map[xs, ys]
    material_ids = world._mat_map[xs, ys]
    for i, (object_id, material_id) in enumerate(zip(object_ids.tolist(), material_ids.tolist())):
        name = object_name(world._objects[object_id]) if object_id else world._mat_names[material_id]
        if name not in seen:
            seen[name] = index[i]
    found = [(name, int(_DIST[cell]), _DIRECTION[cell]) for name, cell in seen.items()]
    return sorted(found, key=lambda item: (item[1], item[0]))


def stations_in_reach(world: crafter.engine.World, pos: Sequence[int]) -> list[str]:
    """Crafting stations crafter counts as nearby for making tools (its own 3x3 `nearby` query)."""
    materials, _ = world.nearby(pos, 1)
    return [station for station in ("table", "furnace") if station in materials]


def describe(env: crafter.Env, last_action: str | None = None, extras: bool = True) -> str:
    """The text observation of the current state of a crafter.Env (after reset)."""
    world, player = env._world, env._player
    lines = []
    seen = visible(world, player.pos)
    if seen:
        lines.append("You see:")
        lines += [f"- {name} {dist} step{'s' if dist > 1 else ''} to your {where}" for name, dist, where in seen]
    else:
        lines.append("You see nothing around you.")
    faced = cell_name(world, (player.pos[0] + player.facing[0], player.pos[1] + player.facing[1]))
    lines.append(f"You face {faced} at your front." if faced else "You face the edge of the world.")
    inventory = player.inventory
    lines.append("Your vitals: " + ", ".join(f"{name} {inventory[name]}/{constants.items[name]['max']}"
                                             for name in VITALS) + ".")
    items = [f"{name} {count}" for name, count in inventory.items() if name not in VITALS and count > 0]
    lines.append(f"Your inventory: {', '.join(items)}." if items else "Your inventory is empty.")
    lines.append(f"Your last action: {last_action}." if last_action else "You have not acted yet.")
    if player.health <= 0:
        lines.append("You are dead.")
    elif player.sleeping:
        lines.append("You are sleeping.")
    if extras:
        lines.append("It is night." if world.daylight < NIGHT_BELOW else "It is day.")
        stations = stations_in_reach(world, player.pos)
        lines.append(f"Within crafting range: {' and '.join(stations)}." if stations
                     else "No table or furnace within crafting range.")
        unlocked = sorted(name for name, count in player.achievements.items() if count > 0)
        lines.append(f"Achievements so far: {', '.join(unlocked)}." if unlocked else "Achievements so far: none.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Score

def success_rates(episodes: Iterable[Iterable[str]]) -> dict[str, float]:
    """Per achievement, the % of episodes that unlocked it; `episodes` gives each episode's unlocked names."""
    counts = dict.fromkeys(ACHIEVEMENTS, 0)
    total = 0
    for unlocked in episodes:
        total += 1
        for name in set(unlocked):
            if name not in counts:
                raise InvalidInput(f"unknown Crafter achievement {name!r}; valid: {', '.join(ACHIEVEMENTS)}.")
            counts[name] += 1
    if total == 0:
        raise InvalidInput("success_rates needs at least one episode.")
    return {name: 100.0 * count / total for name, count in counts.items()}


def crafter_score(success_rates_percent: Mapping[str, float] | Sequence[float]) -> float:
    """The official Crafter score in %: exp(mean_i ln(1 + s_i)) - 1 over the 22 success rates s_i (in %)."""
    if isinstance(success_rates_percent, Mapping):
        if set(success_rates_percent) != set(ACHIEVEMENTS):
            raise InvalidInput(f"crafter_score needs a rate for each of the 22 achievements ({', '.join(ACHIEVEMENTS)}).")
        rates = [float(success_rates_percent[name]) for name in ACHIEVEMENTS]
    else:
        rates = [float(rate) for rate in success_rates_percent]
        if len(rates) != len(ACHIEVEMENTS):
            raise InvalidInput(f"crafter_score needs 22 success rates, got {len(rates)}.")
    if any(not 0.0 <= rate <= 100.0 for rate in rates):
        raise InvalidInput("success rates are percentages between 0 and 100.")
    return math.exp(sum(math.log1p(rate) for rate in rates) / len(rates)) - 1.0


# ----------------------------------------------------------------------------------------------
# Environment

class _Engine(crafter.Env):
    """crafter.Env that draws its image only when asked (consuming the renderer's random numbers either
    way) and balances creatures in a fixed order."""

    def __init__(self, pixels: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pixels = pixels
        unit = np.array(self._size) // self._view
        self._noise_shape = tuple(self._local_view._grid * unit)

    def _balance_chunk(self, chunk, objs) -> None:
        # crafter hands over a set, ordered by memory address, and picks the creature to despawn by index
        # into it, so two crafter.Env with one seed drift apart; one object per cell makes position an order.
        super()._balance_chunk(chunk, sorted(objs, key=lambda obj: (int(obj.pos[0]), int(obj.pos[1]))))

    def _obs(self) -> np.ndarray | None:
        if self.pixels:
            return self.render()
        if self._world.daylight < NIGHT_BELOW:
            self._world.random.uniform(32, 127, self._noise_shape)  # what LocalView._noise would draw
        return None


class CrafterEnv(TextEnv):
    """Crafter with text observations and the 17 action names."""

    metadata = {"render_modes": ["ansi", "rgb_array"]}

    def __init__(self, seed: int | None = None, area: tuple[int, int] | int = (64, 64), max_steps: int = 10000,
                 extras: bool = True, size: tuple[int, int] | int = (64, 64), render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        area = tuple(area) if isinstance(area, Sequence) else (area, area)
        self.extras = extras
        self.max_steps = max_steps
        self._engine = _Engine(pixels=render_mode == "rgb_array", area=area, view=VIEW, size=size,
                               length=max_steps, seed=seed)
        self._frame: np.ndarray | None = None
        self._info: dict[str, Any] = {}
        self._done = False

    @property
    def engine(self) -> crafter.Env:
        """The underlying crafter.Env (its `_player` and `_world` hold the full state)."""
        return self._engine

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict[str, Any]]:
        """New world; `seed` fixes it (the same seed always gives the same world), None continues the sequence."""
        super().reset(seed=seed)
        if seed is not None:
            self._engine._seed, self._engine._episode = int(seed), 0
        self._frame = self._engine.reset()
        self._done = False
        self._info = {"task": TASK, "admissible_actions": list(ACTIONS), "won": False, "max_score": len(ACHIEVEMENTS),
                      "max_steps": self.max_steps, "invalid_action": False, "action": None, "new_achievements": []}
        return self._observe(None), self._update_info()

    def step(self, action: str | int) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._engine._player is None:
            raise RuntimeError("call reset() before step().")
        if self._done:
            return self._last_observation, 0.0, self._info["lost"], not self._info["lost"], dict(self._info)
        index, understood = parse_action(action)
        before = set(self._engine._unlocked)
        self._frame, reward, done, _ = self._engine.step(index)
        name = ACTIONS[index]
        self._info.update(invalid_action=not understood, action=name,
                          new_achievements=sorted(self._engine._unlocked - before))
        info = self._update_info()
        terminated = info["lost"]
        truncated = bool(done) and not terminated
        self._done = terminated or truncated
        return self._observe(name), float(reward), terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._frame
        return super().render()

    def _observe(self, last_action: str | None) -> str:
        self._last_observation = describe(self._engine, last_action, self.extras)
        return self._last_observation

    def _update_info(self) -> dict[str, Any]:
        player = self._engine._player
        unlocked = sorted(self._engine._unlocked)
        self._info.update(
            achievements=unlocked, score=len(unlocked), lost=player.health <= 0, inventory=dict(player.inventory),
            steps=self._engine._step, sleeping=player.sleeping, daylight=float(self._engine._world.daylight),
            position=(int(player.pos[0]), int(player.pos[1])),
        )
        return {**self._info, "action_aliases": dict(ACTION_ALIASES)}   # a fresh dict per call (gymnasium's rule)


# ----------------------------------------------------------------------------------------------
# What evaluation, play and fine-tuning know about Crafter

# Crafter has no splits of its own: world seeds get the offsets TextWorld uses for its game seeds, so evaluation
# worlds never meet the corpus's seeds 0, 1, 2, ...
SPLIT_OFFSET = {"train": 0, "validation": 1_000_000, "test": 2_000_000}


def achievement_matrix(unlocked: Sequence[Sequence[str]]) -> np.ndarray:
    """Episodes x 22 matrix of 0/100: whether each episode unlocked each achievement (in %)."""
    matrix = np.zeros((len(unlocked), len(ACHIEVEMENTS)))
    column = {name: j for j, name in enumerate(ACHIEVEMENTS)}
    for i, names in enumerate(unlocked):
        for name in set(names):
            if name not in column:
                raise InvalidInput(f"unknown Crafter achievement {name!r}; valid: {', '.join(ACHIEVEMENTS)}.")
            matrix[i, column[name]] = 100.0
    return matrix


def crafter_score_estimate(unlocked: Sequence[Sequence[str]]) -> Estimate:
    """The Crafter score (%) of a set of episodes, with a delta-method standard error.

    score = exp(mean_i ln(1 + s_i)) - 1; d score / d s_i = (score + 1) / (22 (1 + s_i)); the rates' covariance
    is the sample covariance of the per-episode 0/100 indicators divided by n.
    """
    if not unlocked:
        raise InvalidInput("the Crafter score needs at least one episode.")
    matrix = achievement_matrix(unlocked)
    rates = matrix.mean(axis=0)
    score = crafter_score(rates.tolist())
    n = matrix.shape[0]
    if n < 2:
        return Estimate(score, None, n, "%")
    gradient = (score + 1.0) / (len(ACHIEVEMENTS) * (1.0 + rates))
    covariance = np.cov(matrix, rowvar=False, ddof=1)
    variance = float(gradient @ covariance @ gradient) / n
    return Estimate(score, math.sqrt(max(variance, 0.0)), n, "%")


def crafter_metrics(episodes: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """(headline metrics, per-achievement success rates in %) from records with `achievements`, `return`, `steps`.

    Headline: `crafter_score` (the official geometric mean, %), `crafter_reward`, `crafter_achievement_fraction`
    (mean % of the 22 unlocked per episode), BALROG's `balrog_progression` (the same number, named as BALROG
    reports it) and the episode steps."""
    require_fields(episodes, ("achievements", "return", "steps"), "Crafter")
    unlocked = [list(e["achievements"]) for e in episodes]
    matrix = achievement_matrix(unlocked)
    metrics = {
        "crafter_score": crafter_score_estimate(unlocked),
        "crafter_reward": estimate([e["return"] for e in episodes], "reward"),
        "crafter_achievement_fraction": estimate((matrix.mean(axis=1)).tolist(), "%"),
        "balrog_progression": estimate([100.0 * len(set(names)) / len(ACHIEVEMENTS) for names in unlocked], "%"),
        "episode_steps": estimate([e["steps"] for e in episodes], "steps"),
    }
    per_achievement = {name: estimate(matrix[:, j].tolist(), "%") for j, name in enumerate(ACHIEVEMENTS)}
    return metrics, per_achievement


def _status(action: str, reward: float, info: Mapping[str, Any]) -> str:
    new = ["new achievement: " + ", ".join(info["new_achievements"])] if info.get("new_achievements") else []
    # info["action"]: the action name the environment understood
    return step_status(info.get("action") or action, reward, info, *new,
                       f"achievements {len(info.get('achievements', []))}/{len(ACHIEVEMENTS)}")


FAMILY = EnvFamily(
    name="crafter",
    title="Crafter",
    make=lambda variant, **options: CrafterEnv(**options),
    splits=tuple(SPLIT_OFFSET),
    episode_seed=lambda split, index: SPLIT_OFFSET[split] + index,
    options=lambda settings: {} if settings.get("max_steps") is None else {"max_steps": settings["max_steps"]},
    resolved_options=lambda env: {"max_steps": env.max_steps},
    training_split=None,
    recorded_info=("achievements",),
    metrics=lambda episodes: crafter_metrics(episodes)[0],
    columns=(Column("crafter_score", 2), Column("balrog_progression"), Column("crafter_reward", 2, "crafter_reward"),
             Column("episode_steps", 1, "steps")),
    note=lambda options: (
        "crafter_score is the geometric mean exp(mean_i ln(1 + s_i)) - 1 over the 22 success rates s_i (%); "
        "balrog_progression is BALROG's metric, the mean share of the 22 achievements unlocked per episode "
        "(also stored as crafter_achievement_fraction). The two are different numbers: compare each only with "
        "its own kind."),
    breakdown=Breakdown("achievement_success_rates", "Success rate per achievement (% of episodes)", "achievement",
                        "success rate (%)", lambda episodes: crafter_metrics(episodes)[1]),
    status=_status,
    renders_frames=True,
)
