"""Crafter frames of recorded episodes, rendered on demand from the episode's world seed and actions, and cached.

    frames = FrameRenderer()
    key = ("runs/eval/x", 3)                       # anything hashable that names the episode
    png = frames.png(key, record, step=2)          # record: the episode's line of episodes.jsonl, parsed
    gif = frames.animation(key, record, start=0, stop=100, extension=".gif")
    frames.check(key, record)                      # {"checked": 412, "total": 1000, "diverged_at": None}

An evaluation records no pixels: the world seed (`env_seed`) and the action strings are enough, since
envs.crafter plays a seed and an action sequence the same way every time. The frame of step k is the
world after the first k actions. A replay keeps its engine where the last request left it and a copy of
it every SNAPSHOT_EVERY steps, so stepping forward costs one engine step and a jump costs at most
SNAPSHOT_EVERY. When an episode is first opened, a background thread plays it through once (crafter's
engine: 0.6-1.7 ms a step on the shared 2-core box, 6-17 s for 10,000 steps) to leave snapshots
everywhere; a jump far ahead before it gets there waits for it rather than replaying the same steps
beside it. On the way it checks the world against the record: the achievements unlocked after each action
must be those recorded (`check`), or the frames are not the game that was played. Drawing leaves the game
alone: crafter draws night-time noise from the world's random generator, whose state `draw` puts back
after every frame.
"""

from __future__ import annotations

import copy
import io
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from viewer.store import BadRun, RunNotFound

SNAPSHOT_EVERY = 250
FRAME_SIZE = 288          # pixels; crafter draws a 9 x 9 grid of 32-pixel cells (7 rows of world, 2 of inventory)
CACHED_FRAMES = 512
CACHED_REPLAYS = 4
MAX_ANIMATION_FRAMES = 2000


def draw(engine: Any, size: int | None = None) -> np.ndarray:
    """(size, size, 3) uint8 picture of a crafter engine's world now (default: the engine's own size), leaving the
    game as it was: crafter draws night-time noise from the world's random generator, whose state is put back."""
    state = engine._world.random.get_state()
    try:
        return engine.render(None if size is None else (size, size))
    finally:
        engine._world.random.set_state(state)


class CrafterReplay:
    """One recorded Crafter episode, replayed lazily up to any step. `prefetch()` plays the whole episode once in a
    background thread, leaving a snapshot every SNAPSHOT_EVERY steps, so that any frame is soon cheap."""

    def __init__(self, env_seed: int, actions: Sequence[str], size: int = FRAME_SIZE, max_steps: int = 10000,
                 area: int | Sequence[int] = 64, unlocks: Sequence[Sequence[str]] | None = None) -> None:
        from envs.crafter import CrafterEnv, parse_action   # crafter loads only when a frame is asked for

        self.actions = [parse_action(action)[0] for action in actions]
        # the achievements the record says each action unlocked: the background replay checks its world against them
        self.unlocks = [set(names) for names in unlocks] if unlocks is not None else None
        self.checked = 0                          # actions replayed by the background thread so far
        self.diverged_at: int | None = None       # first step whose unlocked achievements differ from the record
        self.env = CrafterEnv(size=(size, size), max_steps=max_steps, area=area)
        self.env.reset(seed=int(env_seed))
        self.position = 0
        self.snapshots: dict[int, Any] = {0: copy.deepcopy(self.env.engine)}
        self.lock = threading.Lock()              # the engine drawn from
        self._snapshot_lock = threading.Condition()   # the snapshots, also added by the prefetch thread
        self._prefetch: threading.Thread | None = None
        self._prefetch_done = False

    def frame(self, step: int) -> np.ndarray:
        """(size, size, 3) uint8: the world after `step` actions."""
        if not 0 <= step <= len(self.actions):
            raise RunNotFound(f"this episode has frames 0..{len(self.actions)}; there is no frame {step}.")
        with self.lock:
            return draw(self._engine_at(step))

    def prefetch(self) -> None:
        """Play the episode to its end in the background (once), snapshotting on the way."""
        if self._prefetch is None:
            self._prefetch = threading.Thread(target=self._play_through, name="crafter-prefetch", daemon=True)
            self._prefetch.start()

    def _play_through(self) -> None:
        engine = copy.deepcopy(self.snapshots[0])
        expected: set[str] = set()
        try:
            for position, action in enumerate(self.actions, 1):
                engine.step(action)
                if self.unlocks is not None and self.diverged_at is None:
                    expected |= self.unlocks[position - 1]
                    if engine._unlocked != expected:
                        self.diverged_at = position
                self.checked = position
                if position % SNAPSHOT_EVERY == 0:
                    self._snapshot(position, engine)
        finally:
            with self._snapshot_lock:
                self._prefetch_done = True
                self._snapshot_lock.notify_all()

    def _snapshot(self, position: int, engine: Any) -> None:
        with self._snapshot_lock:
            known = position in self.snapshots
        if not known:
            copied = copy.deepcopy(engine)
            with self._snapshot_lock:
                self.snapshots.setdefault(position, copied)
                self._snapshot_lock.notify_all()

    def _engine_at(self, step: int) -> Any:
        nearest = step - step % SNAPSHOT_EVERY
        with self._snapshot_lock:
            # far from where we are: wait for the prefetch thread's snapshot rather than replay the same steps beside it
            while (self._prefetch is not None and not self._prefetch_done and nearest not in self.snapshots
                   and not nearest <= self.position <= step):
                self._snapshot_lock.wait()
            start = max(s for s in self.snapshots if s <= step)
            snapshot = self.snapshots[start]
        if not start <= self.position <= step:    # behind us, or a snapshot is nearer than where we are
            self.env._engine = copy.deepcopy(snapshot)
            self.position = start
        engine = self.env.engine
        while self.position < step:
            engine.step(self.actions[self.position])
            self.position += 1
            if self.position % SNAPSHOT_EVERY == 0:
                self._snapshot(self.position, engine)
        return engine


class FrameRenderer:
    """PNG frames and animations of recorded Crafter episodes, keyed by the caller (e.g. (run id, episode))."""

    def __init__(self, size: int = FRAME_SIZE) -> None:
        self.size = size
        self._replays: OrderedDict[Hashable, CrafterReplay] = OrderedDict()
        self._frames: OrderedDict[tuple[Hashable, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def replay(self, key: Hashable, record: dict[str, Any], options: dict[str, Any] | None = None) -> CrafterReplay:
        if record.get("family") != "crafter":
            raise RunNotFound(f"{record.get('env')} is text only: only Crafter episodes have frames.")
        if record.get("env_seed") is None:
            raise BadRun("this Crafter episode's record has no env_seed, so its frames cannot be rendered.")
        with self._lock:
            replay = self._replays.get(key)
            if replay is not None:
                self._replays.move_to_end(key)
                return replay
        options = options or {}
        trajectory = record.get("trajectory", [])
        replay = CrafterReplay(record["env_seed"], [step.get("action", "") for step in trajectory], self.size,
                               int(options.get("max_steps") or 10000), options.get("area", 64),
                               [step.get("new_achievements") or [] for step in trajectory])
        with self._lock:
            self._replays[key] = replay
            while len(self._replays) > CACHED_REPLAYS:
                self._replays.popitem(last=False)
        replay.prefetch()
        return replay

    def check(self, key: Hashable, record: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
        """How far the background replay has checked the episode against its record, and where they first differ
        (the achievements the re-simulated world unlocked are not those recorded: the frames are not the game
        that was played, e.g. another crafter version or a record edited by hand)."""
        replay = self.replay(key, record, options)
        return {"checked": replay.checked, "total": len(replay.actions), "diverged_at": replay.diverged_at}

    def png(self, key: Hashable, record: dict[str, Any], step: int, options: dict[str, Any] | None = None) -> bytes:
        with self._lock:
            cached = self._frames.get((key, step))
            if cached is not None:
                self._frames.move_to_end((key, step))
                return cached
        data = png_bytes(self.replay(key, record, options).frame(step))
        with self._lock:
            self._frames[(key, step)] = data
            while len(self._frames) > CACHED_FRAMES:
                self._frames.popitem(last=False)
        return data

    def animation(self, key: Hashable, record: dict[str, Any], start: int = 0, stop: int | None = None,
                  extension: str = ".gif", fps: float = 8.0, options: dict[str, Any] | None = None) -> bytes:
        """Frames `start` .. `stop` (inclusive; default the last) as an animated GIF or an MP4 video."""
        replay = self.replay(key, record, options)
        stop = len(replay.actions) if stop is None else stop
        if not 0 <= start <= stop <= len(replay.actions):
            raise RunNotFound(f"frames {start}..{stop} are outside this episode's 0..{len(replay.actions)}.")
        if stop - start + 1 > MAX_ANIMATION_FRAMES:
            raise RunNotFound(f"{stop - start + 1} frames is more than {MAX_ANIMATION_FRAMES} in one animation; "
                              "export a shorter range (start / stop).")
        return encode_animation([replay.frame(step) for step in range(start, stop + 1)], extension, fps)


def png_bytes(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_animation(frames: Sequence[np.ndarray], extension: str, fps: float) -> bytes:
    """An animated GIF (loops) or an MP4 (H.264, through the imageio-ffmpeg package) of `frames`."""
    import imageio.v3 as iio

    if extension == ".gif":
        return iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    if extension == ".mp4":
        return iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", fps=fps, plugin="FFMPEG")
    raise RunNotFound(f"unknown animation format {extension!r}; use .gif or .mp4.")
