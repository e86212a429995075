"""bwarea installed as a package (`pip install .`, not editable) into a fresh virtual environment works from a
directory that is not the checkout: the `bwarea` command, the bundled configs by name, an agent built from its
bundled config, an evaluation and the micro quickstart.

The fresh environment gets this environment's site-packages as a .pth line, so the dependencies (torch, ...) need
no download; bwarea itself is built from the checkout and installed into the fresh environment, where it comes
first on the path (the checkout's editable install is not active there: .pth files inside an added path are not
processed)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command: list, cwd: Path, timeout: int = 600) -> str:
    environment = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=environment)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


@pytest.mark.slow
def test_an_installed_wheel_works_from_any_directory(tmp_path, tw_cache):
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [packages] = list((venv / "lib").glob("python*/site-packages"))
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python, bwarea = venv / "bin" / "python", venv / "bin" / "bwarea"
    # built from a copy of the working tree: setuptools' build/ folder in the checkout could hold stale modules
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "wandb", "lightning_logs"))
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", source], tmp_path)

    located = run([python, "-c", "import cli, configs; print(cli.__file__); print(configs.directory('quickstart'))"],
                  elsewhere).split()
    assert all(str(packages) in line for line in located)          # the installed copy, not the checkout
    assert run([bwarea, "--version"], elsewhere).strip() == "bwarea 0.1.0"

    agent = run([python, "-c", "import agents; agent = agents.make_agent('spring'); print(type(agent).__name__, "
                 "len(agent.dag.nodes))"], elsewhere)
    assert agent.split() == ["DAGAgent", "9"]

    evaluation = elsewhere / "evaluation"
    run([bwarea, "evaluate", "--agent", "random", "--suite", "crafter", "--episodes", "1", "--max_steps", "3",
         "--out", evaluation, "--progress", "false"], elsewhere)
    assert (evaluation / "report.md").read_text().startswith("# Evaluation of agent `random`")

    quickstart = elsewhere / "quickstart"
    printed = run([bwarea, "quickstart", "--config", "micro", "--out", quickstart, "--textworld_cache", tw_cache,
                   "--threads", "1", "--spring_steps", "0"], elsewhere)
    assert "| BWArea |" in printed and (quickstart / "report.md").is_file()
