"""Environments by name: "textworld/<preset>", "crafter", "bbh/<task>", and any family registered at run time.

A family's module is imported on first use, so `import envs` stays cheap and a BBH user never loads TextWorld.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import gymnasium

from common.errors import InvalidInput
from envs.batch import BatchEnv
from envs.family import EnvFamily

# family name -> the module whose FAMILY declares it (imported when the family is first needed)
BUILTIN_FAMILIES = {"textworld": "envs.textworld", "crafter": "envs.crafter", "bbh": "envs.bbh"}
_loaded: dict[str, EnvFamily] = {}


def register_family(family: EnvFamily) -> None:
    """Make a family's environments known to `make`, `names`, evaluation, play, fine-tuning and plots."""
    if not isinstance(family, EnvFamily):
        raise TypeError(f"register_family takes an envs.EnvFamily, got {type(family).__name__}.")
    if "/" in family.name or not family.name:
        raise InvalidInput(f"a family name is one word without '/', got {family.name!r}.")
    _loaded[family.name] = family


def family_names() -> list[str]:
    return list(dict.fromkeys([*BUILTIN_FAMILIES, *_loaded]))


def family(name: str) -> EnvFamily:
    """The family of an environment name ("textworld/coin-easy" -> TextWorld's) or of a family name."""
    key = str(name).partition("/")[0]
    if key not in _loaded:
        if key not in BUILTIN_FAMILIES:
            raise InvalidInput(f"unknown environment family {key!r} (in {name!r}); valid families are "
                               f"{', '.join(family_names())}.")
        _loaded[key] = importlib.import_module(BUILTIN_FAMILIES[key]).FAMILY
    return _loaded[key]


def patterns() -> list[str]:
    """How names are formed, one per family: "textworld/<preset>", "crafter", ..."""
    return [family(name).pattern for name in family_names()]


def names() -> list[str]:
    """Every valid environment name."""
    return [env for name in family_names() for env in family(name).names()]


def _unknown(name: str) -> InvalidInput:
    variants = [f"<{spec.variant_kind}> of {spec.name}: {', '.join(spec.variants())}"
                for spec in map(family, family_names()) if spec.variants is not None]
    close = difflib.get_close_matches(str(name), names(), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return InvalidInput(f"unknown environment {name!r}; {hint}valid names are {', '.join(patterns())}, with "
                        f"{'; '.join(variants)}.")


def make(name: str, **kwargs: Any) -> gymnasium.Env:
    """Create an environment by name; keyword arguments go to its constructor (see docs/envs.md)."""
    key, _, variant = str(name).partition("/")
    if key not in family_names():
        raise _unknown(name)
    spec = family(key)
    if (spec.variants is None and variant) or (spec.variants is not None and variant not in spec.variants()):
        raise _unknown(name)
    return spec.make(variant, **kwargs)


def make_batch(name: str, n: int, **kwargs: Any) -> BatchEnv:
    """`n` environments of one name in a BatchEnv (no auto-reset; see envs/batch.py)."""
    if n < 1:
        raise InvalidInput(f"make_batch needs n >= 1, got {n}.")
    return BatchEnv([make(name, **kwargs) for _ in range(n)])
