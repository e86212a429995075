"""The configs bundled with bwarea, as package data: agents/, data/, evaluate/, finetune/, pretrain/, quickstart/.

They install with the package, so a command finds them by name from any directory (`bwarea quickstart --config
micro`, `agents.make_agent("spring")`); in a checkout they are these very files, editable in place.

    configs.bundled("quickstart", "micro")     # -> Path of quickstart/micro.yaml, or None
    configs.names("agents")                    # -> ["bbh_dag", "direct", ...]
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = ("agents", "data", "evaluate", "finetune", "pretrain", "quickstart")


def directory(kind: str) -> Path:
    """The folder of one kind of bundled config (a real folder: the package is installed unzipped)."""
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; choose one of {', '.join(KINDS)}.")
    return Path(str(resources.files(__name__) / kind))


def names(kind: str) -> list[str]:
    """The bundled configs of one kind, by name (file name without .yaml)."""
    return sorted(path.stem for path in directory(kind).glob("*.yaml"))


def bundled(kind: str, name: str) -> Path | None:
    """The bundled config `name` ("micro", or "micro.yaml") of one kind, or None when there is none."""
    path = directory(kind) / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if "/" not in name and path.is_file() else None
