"""Agents and backends from configuration: the one entry point for `bwarea evaluate` / `bwarea play`.

    agent = make_agent("spring")                                   # configs/agents/spring.yaml
    agent = make_agent("my_agent.yaml", overrides={"backend": {"type": "openai", "base_url": "...", "model": "..."}})
    agent = make_agent({"agent": {"type": "random", "seed": 3}})

A config has an `agent` section (its `type` picks the agent class, the other keys fill its config
dataclass) and, for language-model agents, a `backend` section (its `type` picks the backend).
Unknown keys are errors that list the valid ones. A relative `dag` or `context.document` path is
resolved against the config file's directory when the file exists there; `dag` may also be the bare
name of a bundled config ("spring": the DAG of configs/agents/spring.yaml).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import configs
from agents.base import Agent, build_dataclass
from agents.baselines import (HumanAgent, HumanAgentConfig, RandomAgent, RandomAgentConfig, WalkthroughAgent,
                              WalkthroughAgentConfig)
from agents.dag_agent import DAGAgent, DAGAgentConfig
from agents.direct_agent import DirectAgent, DirectAgentConfig
from agents.llm import Backend
from common.errors import InvalidInput, MissingInput

AGENTS: dict[str, tuple[type, type, bool]] = {   # type -> (config class, agent class, needs a backend)
    "dag": (DAGAgentConfig, DAGAgent, True),
    "direct": (DirectAgentConfig, DirectAgent, True),
    "random": (RandomAgentConfig, RandomAgent, False),
    "walkthrough": (WalkthroughAgentConfig, WalkthroughAgent, False),
    "human": (HumanAgentConfig, HumanAgent, False),
}
# type -> (module, config class, backend class); the module is imported when a backend of that type is made, so
# building a scripted agent never loads torch
BACKENDS: dict[str, tuple[str, str, str]] = {
    "transformers": ("agents.transformers_backend", "TransformersConfig", "TransformersBackend"),
    "openai": ("agents.http_backend", "OpenAIConfig", "OpenAIBackend"),
    "bwarea": ("agents.bwarea_backend", "BWAreaBackendConfig", "BWAreaBackend"),
}


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `overrides` replaces. A section whose `type`
    changes (e.g. backend transformers -> openai) is replaced as a whole: the old type's options do not apply."""
    merged = dict(base)
    for key, value in overrides.items():
        old = merged.get(key)
        same_kind = isinstance(old, Mapping) and old.get("type") == value.get("type", old.get("type")) \
            if isinstance(value, Mapping) else False
        merged[key] = merge(old, value) if same_kind else value
    return merged


def config_path(name: str | os.PathLike) -> Path:
    """A YAML path, or the bare name of a file in configs/agents/ ("spring" -> configs/agents/spring.yaml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = configs.bundled("agents", str(name))
    if found is not None:
        return found
    raise MissingInput(f"agent config {name!r} is neither a file nor a bundled agent config "
                       f"({', '.join(configs.names('agents'))}).")


def load_config(source: Mapping[str, Any] | str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config as a dict (from a mapping, a YAML path or a bundled name), with overrides merged in."""
    if isinstance(source, Mapping):
        config, base_dir = dict(source), None
    else:
        path = config_path(source)
        config, base_dir = yaml.safe_load(path.read_text(encoding="utf-8")) or {}, path.parent
        if not isinstance(config, dict):
            raise InvalidInput(f"{path}: an agent config is a mapping with `agent` (and `backend`) sections.")
    config = merge(config, overrides or {})
    if not isinstance(config.get("agent"), Mapping) or "type" not in config["agent"]:
        raise InvalidInput(f"an agent config needs an `agent` section with a `type` ({', '.join(AGENTS)}).")
    agent = config["agent"] = dict(config["agent"])
    if isinstance(agent.get("dag"), str):
        agent["dag"] = _resolve(agent["dag"], base_dir, bundled=True)
    if isinstance(agent.get("context"), Mapping) and isinstance(agent["context"].get("document"), str):
        agent["context"] = {**agent["context"], "document": _resolve(agent["context"]["document"], base_dir)}
    return config


def _resolve(value: str, base_dir: Path | None, bundled: bool = False) -> str:
    """A relative path found next to the config file, else (bundled=True) the bare name of a config in
    configs/agents/ ("spring"), else `value` unchanged (relative to the working directory)."""
    if Path(value).expanduser().is_absolute():
        return value
    candidates = [base_dir / value] if base_dir is not None else []
    if bundled and configs.bundled("agents", value) is not None:
        candidates.append(configs.bundled("agents", value))
    return next((str(c) for c in candidates if c.is_file()), value)


def make_backend(config: Mapping[str, Any]) -> Backend:
    """A backend from its config section: `type` (transformers / openai / bwarea) plus that backend's options."""
    values = dict(config)
    kind = values.pop("type", None)
    if kind not in BACKENDS:
        raise InvalidInput(f"backend type {kind!r} is unknown; choose one of: {', '.join(BACKENDS)}.")
    module_name, config_name, backend_name = BACKENDS[kind]
    module = importlib.import_module(module_name)
    config_class, backend_class = getattr(module, config_name), getattr(module, backend_name)
    return backend_class(build_dataclass(config_class, values, f"backend ({kind})"))


def make_agent(source: Mapping[str, Any] | str | os.PathLike, backend: Backend | None = None,
               overrides: Mapping[str, Any] | None = None, **agent_options: Any) -> Agent:
    """An agent from a config (mapping, YAML path or bundled name). `backend` replaces the config's backend
    section (share one loaded model between agents); `agent_options` go to the agent's constructor
    (e.g. input_stream= for the human agent)."""
    config = load_config(source, overrides)
    values = dict(config["agent"])
    kind = values.pop("type")
    if kind not in AGENTS:
        raise InvalidInput(f"agent type {kind!r} is unknown; choose one of: {', '.join(AGENTS)}.")
    config_class, agent_class, needs_backend = AGENTS[kind]
    agent_config = build_dataclass(config_class, values, f"agent ({kind})")
    if not needs_backend:
        return agent_class(agent_config, **agent_options)
    if backend is None:
        if not isinstance(config.get("backend"), Mapping):
            raise InvalidInput(f"a {kind} agent needs a `backend` section (type: {' / '.join(BACKENDS)}) or backend=.")
        backend = make_backend(config["backend"])
    return agent_class(backend, agent_config, **agent_options)
