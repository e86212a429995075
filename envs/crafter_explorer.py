"""A scripted Crafter player for corpus generation: climbs the tech tree, drinks, eats, fights and wanders.

It reads the engine's state (it is a data generator, not an agent under evaluation) and chooses one
of the 17 action names per step. With probability `epsilon` it takes a random action instead, so
the corpus also shows actions that fail and what the game answers. Goals, in order: fight an
adjacent zombie; sleep when tired; drink and eat when low; make every tool it can at a table or
furnace in reach; place a table, then a furnace, once it can afford them and none is close; gather
what the next tool needs (wood, stone, coal, iron); plant saplings; otherwise wander. Costs and
requirements come from crafter's rules data, like the manual.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from crafter import constants, objects

from envs.crafter import ACTIONS, COMPASS, CrafterEnv, stations_in_reach

# the names agents read and write (a corpus in the engine's names would teach a model words no prompt uses)
MOVES = {(-1, 0): COMPASS["move_left"], (1, 0): COMPASS["move_right"], (0, -1): COMPASS["move_up"],
         (0, 1): COMPASS["move_down"]}
SEARCH_RADIUS = 12      # half-width of the square searched for targets around the player
STATION_RADIUS = 6      # a table or furnace this close is walked back to instead of building another
GATHER = {"wood": 6, "stone": 5, "coal": 1, "iron": 1}


class CrafterExplorer:
    """`act(env)` returns the next action name for a CrafterEnv (or anything exposing `.engine`)."""

    def __init__(self, rng: np.random.Generator, epsilon: float = 0.1) -> None:
        self.rng = rng
        self.epsilon = epsilon
        self._heading = MOVES_LIST[int(rng.integers(len(MOVES_LIST)))]

    def act(self, env: CrafterEnv) -> str:
        engine = env.engine
        player, world = engine._player, engine._world
        if self.rng.random() < self.epsilon:
            return ACTIONS[int(self.rng.integers(len(ACTIONS)))]
        if player.sleeping:
            return "noop"
        inventory = player.inventory
        zombie = self._adjacent(world, player.pos, objects.Zombie)
        if zombie is not None:
            return self._face_and_do(player, zombie)
        if inventory["energy"] < 3:
            return "sleep"
        if inventory["drink"] < 5 and (step := self._go_do(world, player, lambda m, o: m == "water")):
            return step
        if inventory["food"] < 5 and (step := self._go_do(world, player, lambda m, o: isinstance(o, objects.Cow))):
            return step
        craft = self._craftable(world, player)
        if craft:
            return craft
        build = self._buildable(world, player)
        if build:
            return build
        for material in self._wanted_materials(world, player):
            if step := self._go_do(world, player, lambda m, o, want=material: m == want and o is None):
                return step
        if inventory["sapling"] and self._faced_material(world, player) == "grass":
            return "place_plant"
        if self.rng.random() < 0.05 and self._faced_material(world, player) == "grass":
            return "do"  # a sapling now and then
        return self._wander(world, player)

    # -- decisions -------------------------------------------------------------------------------

    def _craftable(self, world, player) -> str | None:
        stations = set(stations_in_reach(world, player.pos))
        for tool, rule in constants.make.items():
            affordable = all(player.inventory[item] >= count for item, count in rule["uses"].items())
            if player.inventory[tool] == 0 and affordable and set(rule["nearby"]) <= stations:
                return f"make_{tool}"
        return None

    def _buildable(self, world, player) -> str | None:
        inventory = player.inventory
        for station in ("table", "furnace"):
            rule = constants.place[station]
            affordable = all(inventory[item] >= count for item, count in rule["uses"].items())
            if station == "furnace" and not inventory["stone_pickaxe"]:
                continue  # a furnace only helps once iron is within reach
            if not affordable:
                continue
            near = self._nearest(world, player.pos, lambda m, o, s=station: m == s, STATION_RADIUS)
            if near is None:
                if self._faced_material(world, player) in rule["where"] and self._faced_object(world, player) is None:
                    return f"place_{station}"
                return self._wander(world, player)
            if station not in stations_in_reach(world, player.pos) and self._needs_station(player, station):
                return self._step_towards(world, player, lambda m, o, s=station: m == s)
        return None

    def _needs_station(self, player, station: str) -> bool:
        return any(station in rule["nearby"] and player.inventory[tool] == 0
                   and all(player.inventory[item] >= count for item, count in rule["uses"].items())
                   for tool, rule in constants.make.items())

    def _wanted_materials(self, world, player) -> list[str]:
        inventory = player.inventory
        wanted = []
        for item, target in GATHER.items():
            source = next(m for m, rule in constants.collect.items() if item in rule["receive"])
            tools_ok = all(inventory[tool] >= count for tool, count in constants.collect[source]["require"].items())
            if tools_ok and inventory[item] < target:
                wanted.append(source)
        return wanted

    # -- movement --------------------------------------------------------------------------------

    def _go_do(self, world, player, is_target) -> str | None:
        """'do' when facing a target, else the first step towards the nearest one (None if none in range)."""
        faced = self._faced(player)
        material, obj = world[faced]
        if material is not None and is_target(material, obj):
            return "do"
        return self._step_towards(world, player, is_target)

    def _step_towards(self, world, player, is_target) -> str | None:
        path = self._path(world, player.pos, is_target)
        if path is None:
            return None
        return MOVES[path]

    def _path(self, world, start, is_target) -> tuple[int, int] | None:
        """First move of a shortest walk to a cell next to a target (a move into the target turns the player)."""
        start = (int(start[0]), int(start[1]))
        first: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            for delta in MOVES_LIST:
                nxt = (cell[0] + delta[0], cell[1] + delta[1])
                if nxt in first or abs(nxt[0] - start[0]) > SEARCH_RADIUS or abs(nxt[1] - start[1]) > SEARCH_RADIUS:
                    continue
                material, obj = world[nxt]
                if material is None:
                    continue
                move = first[cell] or delta
                if is_target(material, obj):
                    return move
                first[nxt] = move
                if material in constants.walkable and obj is None:
                    queue.append(nxt)
        return None

    def _nearest(self, world, pos, is_target, radius: int) -> tuple[int, int] | None:
        x0, y0 = int(pos[0]), int(pos[1])
        best = None
        for x in range(max(0, x0 - radius), min(world.area[0], x0 + radius + 1)):
            for y in range(max(0, y0 - radius), min(world.area[1], y0 + radius + 1)):
                material, obj = world[(x, y)]
                if is_target(material, obj):
                    dist = abs(x - x0) + abs(y - y0)
                    if best is None or dist < best[0]:
                        best = (dist, (x, y))
        return None if best is None else best[1]

    def _wander(self, world, player) -> str:
        if self.rng.random() < 0.15:
            self._heading = MOVES_LIST[int(self.rng.integers(len(MOVES_LIST)))]
        target = (player.pos[0] + self._heading[0], player.pos[1] + self._heading[1])
        material, obj = world[target]
        if material not in constants.walkable or obj is not None:
            free = [d for d in MOVES_LIST if world[(player.pos[0] + d[0], player.pos[1] + d[1])][0] in constants.walkable]
            self._heading = free[int(self.rng.integers(len(free)))] if free else self._heading
        return MOVES[self._heading]

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _faced(player) -> tuple[int, int]:
        return int(player.pos[0] + player.facing[0]), int(player.pos[1] + player.facing[1])

    def _faced_material(self, world, player) -> str | None:
        return world[self._faced(player)][0]

    def _faced_object(self, world, player):
        return world[self._faced(player)][1]

    @staticmethod
    def _adjacent(world, pos, kind) -> tuple[int, int] | None:
        for delta in MOVES_LIST:
            cell = (int(pos[0] + delta[0]), int(pos[1] + delta[1]))
            if isinstance(world[cell][1], kind):
                return delta
        return None

    @staticmethod
    def _face_and_do(player, delta: tuple[int, int]) -> str:
        return "do" if tuple(player.facing) == delta else MOVES[delta]


MOVES_LIST = list(MOVES)
