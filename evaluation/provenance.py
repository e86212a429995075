"""The settings written beside every number: the agent (config, model files, DAG, all hashed), the plan, versions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import agents
from evaluation.config import FORMAT, EvaluationConfig
from evaluation.plan import Unit, env_seed, family_of

VERSIONED_PACKAGES = ("bwarea", "torch", "transformers", "tokenizers", "textworld", "crafter", "gymnasium", "numpy")


def canonical_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _file_sha256(path: Path, limit_bytes: int = 512 * 2**20) -> str | None:
    if not path.is_file() or path.stat().st_size > limit_bytes:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprint(model: str) -> dict[str, Any] | None:
    """For a local model directory: sha256 of config.json, training_info.json and (up to 512 MiB) the weights."""
    directory = Path(model).expanduser()
    if not directory.is_dir():
        return None
    fingerprint: dict[str, Any] = {"path": str(directory)}
    for name in ("config.json", "training_info.json", "model.safetensors"):
        path = directory / name
        if path.is_file():
            fingerprint[name] = {"bytes": path.stat().st_size, "sha256": _file_sha256(path)}
    return fingerprint


def describe_agent(source: str | Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's settings that decide its numbers: type, backend and model, sampling, history, DAG + its hash."""
    agent = dict(resolved["agent"])
    description: dict[str, Any] = {
        "source": source if isinstance(source, str) else "inline mapping",
        "type": agent["type"],
        "config": resolved,
        "config_sha256": canonical_sha256(resolved),
    }
    for key in ("temperature", "max_tokens", "history", "style", "parsing", "answer_format", "execution",
                "fallback_action"):
        if key in agent:
            description[key] = agent[key]
    backend = resolved.get("backend")
    if isinstance(backend, Mapping):
        description["backend"] = backend.get("type")
        description["model"] = backend.get("model")
        for key in ("package", "base_url", "token_temperature", "top_k", "top_p"):
            if backend.get(key) is not None:
                description[key] = backend[key]
        if backend.get("model") is not None:
            fingerprint = model_fingerprint(str(backend["model"]))
            if fingerprint:
                description["model_files"] = fingerprint
    if agent.get("dag") is not None:
        dag = agents.QuestionDAG.load(agent["dag"])
        declaration = {"name": dag.name, "nodes": [dataclasses.asdict(node) for node in dag.nodes.values()]}
        description["dag"] = {"name": dag.name, "nodes": len(dag.nodes), "edges": dag.num_edges,
                              "sha256": canonical_sha256(declaration)}
    if isinstance(agent.get("context"), Mapping):
        description["context_document"] = agent["context"].get("document")
    return description


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts)


def build_settings(config: EvaluationConfig, names: Sequence[str], resolved_agent: Mapping[str, Any],
                   units: Sequence[Unit], options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The settings behind the numbers; `options[name]`: each environment's resolved options (data paths,
    effective max_steps)."""
    environments = {}
    for name in names:
        episodes = sorted({j for unit in units if unit.env == name for j in unit.episodes})
        seeds = [env_seed(name, config.split, j) for j in episodes]
        environments[name] = {"family": family_of(name), "episodes": len(episodes), "episode_indices": _ranges(episodes),
                              "env_seeds": _ranges(seeds), "options": dict(options[name])}
    return {
        "format": FORMAT,
        "agent": describe_agent(config.agent, resolved_agent),
        "suite": list(names),
        "episodes_per_seed": config.episodes,
        "first_episode": config.first_episode,
        "seeds": list(config.seeds),
        "split": config.split,
        "max_steps": config.max_steps,
        "batch_size": config.batch_size,
        "traces": config.traces,
        "seeding": "per batch, an agent's own seed and an in-process backend's sampling seed = unit_seed(seed, environment, batch)",
        "environments": environments,
        "versions": package_versions(),
    }


def settings_line(settings: Mapping[str, Any]) -> str:
    """One line with the settings that decide the numbers (shown under every table)."""
    agent = settings["agent"]
    parts = [f"agent {agent['type']} ({agent['source']}, config sha256 {agent['config_sha256'][:12]})"]
    if agent.get("backend"):
        parts.append(f"backend {agent['backend']}, model {agent.get('model')}")
    for key in ("temperature", "max_tokens", "history", "style"):
        if key in agent:
            parts.append(f"{key.replace('_', ' ')} {agent[key]}")
    if agent.get("dag"):
        parts.append(f"DAG {agent['dag']['name']} (sha256 {agent['dag']['sha256'][:12]})")
    parts.append(f"seeds {settings['seeds']}")
    parts.append(f"split {settings['split']}")
    versions = settings["versions"]
    parts.append("python {python}, torch {torch}, transformers {transformers}, textworld {textworld}, "
                 "crafter {crafter}".format(**versions))
    return "Settings: " + "; ".join(parts) + "."
