"""Writing files so that nothing half-written is ever visible: temp file in the same directory + rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def cache_root() -> Path:
    """Root of all bwarea caches: $BWAREA_CACHE_DIR, else ~/.cache/bwarea."""
    if os.environ.get("BWAREA_CACHE_DIR"):
        return Path(os.environ["BWAREA_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "bwarea"
