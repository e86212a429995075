"""The dependency rule of docs/architecture.md, checked on every import statement of every module (function-level
imports included): each package imports only from the layers below it, and only training/ and cli/ touch
Lightning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"common", "configs", "bwarea", "envs", "agents", "training", "evaluation", "viewer", "cli"}
# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "common": set(),
    "configs": set(),
    "bwarea": {"common", "configs"},
    "envs": {"common", "configs"},
    "agents": {"common", "configs", "bwarea", "envs"},
    "training": {"common", "configs", "bwarea", "envs", "agents"},
    "evaluation": {"common", "configs", "bwarea", "envs", "agents"},
    "viewer": {"common", "configs", "bwarea", "envs", "agents", "evaluation"},
    "cli": OURS,
}
LIGHTNING_USERS = {"training", "cli"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    broken = {}
    for path in sorted((REPO / package).rglob("*.py")):
        imported = imported_packages(path)
        wrong = (imported & OURS) - ALLOWED[package] - {package}
        if package not in LIGHTNING_USERS and imported & {"lightning", "pytorch_lightning"}:
            wrong.add("lightning")
        if wrong:
            broken[str(path.relative_to(REPO))] = sorted(wrong)
    assert not broken, f"imports against the dependency rule (docs/architecture.md): {broken}"
