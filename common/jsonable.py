"""Values as they read back from JSON."""

from __future__ import annotations

import json
from typing import Any


def json_default(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays become numbers and lists, sets sorted lists, the rest strings."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def jsonable(value: Any) -> Any:
    """`value` exactly as it reads back from JSON (tuples become lists, numpy values numbers, paths strings)."""
    return json.loads(json.dumps(value, default=json_default))
