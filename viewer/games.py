"""Games played in the browser: one `bwarea play` session per game, driven by requests instead of a terminal.

    games = Games(out_dir="runs/play")
    state = games.start("textworld/coin-easy", seed=0)          # {"id", "observation", "admissible", ...}
    state = games.act(state["id"], "go north")
    state = games.quit(state["id"])                             # saved; finished games are saved by themselves

Each game is a evaluation.play.Session (the environment, the optional agent whose suggestion is shown each
turn, the output directory and the saving of `episode.json`), so a browser game is saved exactly as a
terminal one: the `bwarea evaluate` episode record plus `player`, `agent`, `ended` and `split`, in
`<out_dir>/<env>-<seed>-<time>/episode.json`. With `out_dir` among the viewer's roots it then appears
in the runs list, replays and compares like any other run. Torch, TextWorld and crafter load with the
first game, not with the viewer.
"""

from __future__ import annotations

import datetime
import io
import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np

from viewer.frames import draw
from viewer.store import RunNotFound, ViewerError

MAX_GAMES = 16     # games kept in memory; starting one more drops the oldest (saving it as "abandoned")


class BrowserGame:
    """One episode: a evaluation.play.Session whose turns come from HTTP requests."""

    def __init__(self, game_id: str, env: str, seed: int, split: str, agent: str | None, out_dir: Path,
                 options: dict[str, Any]) -> None:
        from evaluation.play import PlayConfig, Session
        from evaluation.records import EpisodeRecorder

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = out_dir / f"{env.replace('/', '_')}-{seed}-{stamp}-{game_id}"
        config = PlayConfig(env=env, seed=seed, split=split, agent=agent or None, out=str(out), **options)
        self.id = game_id
        self.lock = threading.Lock()
        self.session = Session(config, input_stream=io.StringIO(), output=io.StringIO())
        self.family = env.partition("/")[0]
        observation, info = self.session.env.reset(seed=self.session.reset_seed)
        self.session.recorder = EpisodeRecorder(env, 0, 0, seed, self.session.reset_seed, observation, info)
        if self.session.agent is not None:
            self.session.agent.reset(info)
        self.observation, self.info = observation, info
        self.status, self.ended, self.saved = "", None, None
        self.suggestion, self.trace = self._suggest()

    def _suggest(self) -> tuple[str | None, Any]:
        agent = self.session.agent
        if agent is None or self.ended:
            return None, None
        suggestion = agent.act(self.observation, self.info)
        return suggestion, agent.last_traces[0]

    def act(self, action: str) -> None:
        """One turn: the typed action ("" takes the agent's suggestion)."""
        action = action.strip() or (self.suggestion or "")
        if self.ended:
            raise ViewerError(f"game {self.id} is over ({self.ended}); start a new one.")
        if not action:
            raise ViewerError("type an action (this game has no agent to suggest one).")
        session = self.session
        if session.agent is not None and action != self.suggestion:
            session.agent.override_action(0, action)
        observation, reward, terminated, truncated, info = session.env.step(action)
        session.recorder.step(action, reward, observation, info, terminated, truncated, self.trace)
        if self.suggestion is not None:
            session.recorder.trajectory[-1]["suggestion"] = self.suggestion
        self.observation, self.info = observation, info
        self.status = session.status(action, reward, info)
        if terminated or truncated:
            self.finish(session.outcome(info, truncated))
        self.suggestion, self.trace = self._suggest()

    def finish(self, ended: str) -> None:
        if self.saved is None:
            self.ended = ended
            self.saved = str(self.session.save(ended))

    def state(self, frame_url: str | None = None) -> dict[str, Any]:
        recorder = self.session.recorder
        return {"id": self.id, "env": self.session.config.env, "family": self.family, "seed": self.session.config.seed,
                "observation": self.observation, "task": str(self.info.get("task") or ""),
                "admissible": list(self.info.get("admissible_actions") or []),
                "score": self.info.get("score"), "max_score": self.info.get("max_score"),
                "achievements": list(self.info.get("achievements") or []),
                "steps": len(recorder.trajectory), "return": recorder.total_reward, "status": self.status,
                "suggestion": self.suggestion, "ended": self.ended, "saved": self.saved, "frame": frame_url}

    def frame(self, size: int) -> np.ndarray:
        if self.family != "crafter":
            raise RunNotFound(f"{self.session.config.env} is text only: only Crafter games have a picture.")
        return draw(self.session.env.engine, size)


class Games:
    """The games being played, by id."""

    def __init__(self, out_dir: str | Path, options: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.options = dict(options or {})     # PlayConfig extras: textworld_cache_dir, bbh_data_dir, max_steps
        self._games: dict[str, BrowserGame] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, env: str, seed: int = 0, split: str = "test", agent: str | None = None) -> BrowserGame:
        try:
            game = BrowserGame(f"g{next(self._ids)}", env, int(seed), split, agent, self.out_dir, self.options)
        except (ValueError, FileNotFoundError) as error:   # bad environment, split, agent or data directory
            raise ViewerError(str(error)) from None
        with self._lock:
            self._games[game.id] = game
            while len(self._games) > MAX_GAMES:
                oldest = self._games.pop(next(iter(self._games)))
                oldest.finish("abandoned")
        return game

    def get(self, game_id: str) -> BrowserGame:
        with self._lock:
            game = self._games.get(game_id)
        if game is None:
            raise RunNotFound(f"no game {game_id!r} is being played; start one on the play page.")
        return game

    def close(self) -> None:
        """Save every unfinished game (the viewer is stopping)."""
        with self._lock:
            for game in self._games.values():
                game.finish("viewer stopped")
