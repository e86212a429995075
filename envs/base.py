"""What every bwarea environment shares: string observations and actions on top of gymnasium.Env.

Contract (see docs/envs.md): `reset(seed=...) -> (obs, info)` and
`step(action) -> (obs, reward, terminated, truncated, info)` with `info` holding at least
`task`, `score`, `max_score`, `won`, `lost`, `invalid_action`, and `admissible_actions` where the
game knows them. A bad action never raises: the game answers it and `info["invalid_action"]` is True.
Stepping an episode that has already ended changes nothing and returns the final observation again
with reward 0.
"""

from __future__ import annotations

import string

import gymnasium
from gymnasium import spaces

from common.errors import InvalidInput

# Observations are free text; gymnasium's Text space needs a length bound and a character set.
CHARSET = frozenset(string.printable)
MAX_TEXT = 100_000


def text_space(max_length: int = MAX_TEXT, extra_characters: str = "") -> spaces.Text:
    """Printable ASCII plus `extra_characters` (for data with other characters, such as BBH's German)."""
    return spaces.Text(max_length=max_length, min_length=0, charset=CHARSET | set(extra_characters))


class TextEnv(gymnasium.Env):
    """Base class: Text observation/action spaces and an "ansi" render of the last observation."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidInput(f"render_mode {render_mode!r} is not supported; use one of "
                               f"{', '.join(self.metadata['render_modes'])} or leave it unset.")
        self.render_mode = render_mode
        self.observation_space = text_space()
        self.action_space = text_space(1000)
        self._last_observation = ""

    def render(self) -> str | None:
        return self._last_observation if self.render_mode == "ansi" else None
