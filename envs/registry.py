"""Environments by name: "textworld/<preset>", "crafter", "bbh/<task>".

Modules are imported on first use, so `import envs` stays cheap and a BBH user never loads TextWorld.
"""

from __future__ import annotations

from typing import Any

import gymnasium

from envs.batch import BatchEnv

PATTERNS = ("textworld/<preset>", "crafter", "bbh/<task>")


def _textworld_presets() -> list[str]:
    from envs.textworld import PRESETS
    return list(PRESETS)


def _bbh_tasks() -> list[str]:
    from envs.bbh import TASKS
    return list(TASKS)


def names() -> list[str]:
    """Every valid environment name."""
    return ([f"textworld/{preset}" for preset in _textworld_presets()] + ["crafter"]
            + [f"bbh/{task}" for task in _bbh_tasks()])


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown environment {name!r}; valid names are {', '.join(PATTERNS)}, with <preset> one of "
        f"{', '.join(_textworld_presets())} and <task> one of {', '.join(_bbh_tasks())}."
    )


def make(name: str, **kwargs: Any) -> gymnasium.Env:
    """Create an environment by name; keyword arguments go to its constructor (see docs/envs.md)."""
    family, _, variant = str(name).partition("/")
    if family == "crafter" and not variant:
        from envs.crafter import CrafterEnv
        return CrafterEnv(**kwargs)
    if family == "textworld" and variant in _textworld_presets():
        from envs.textworld import TextWorldEnv
        return TextWorldEnv(preset=variant, **kwargs)
    if family == "bbh" and variant in _bbh_tasks():
        from envs.bbh import BBHEnv
        return BBHEnv(task=variant, **kwargs)
    raise _unknown(name)


def make_batch(name: str, n: int, **kwargs: Any) -> BatchEnv:
    """`n` environments of one name in a BatchEnv (no auto-reset; see envs/batch.py)."""
    if n < 1:
        raise ValueError(f"make_batch needs n >= 1, got {n}.")
    return BatchEnv([make(name, **kwargs) for _ in range(n)])
