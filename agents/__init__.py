"""Agents and LLM backends: DAG prompting, SPRING, direct prompting, baselines, human play.

Build an agent from a YAML config (a bundled name in configs/agents/, a path, or a dict):

    import agents, envs
    agent = agents.make_agent("spring")      # SPRING + SmolLM2-135M-Instruct (local GGUF)
    agent = agents.make_agent("spring", overrides={"backend": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1",
                                                                "model": "my-model", "api_key_env": "OPENAI_API_KEY"}})
    agent = agents.make_agent("spring", backend=already_loaded_backend)   # share one model between agents

    make_agent(source, backend=None, overrides=None, **agent_options) -> Agent
        source: bundled name ("spring", "textworld_dag", "bbh_dag", "direct", "own_model", "random",
        "walkthrough", "human"), YAML path, or {"agent": {...}, "backend": {...}} dict; overrides are
        merged deeply; agent_options go to the agent's constructor (HumanAgent: input_stream=, output_stream=).

The Agent protocol (every agent, LLM or not):

    agent.reset(info)                                  # one environment: start an episode
    action = agent.act(obs, info)                      # -> str
    agent.reset_batch(infos)                           # many environments (one slot each)
    agent.reset_one(i, info)                           # restart slot i only (its env was reset)
    actions = agent.act_batch(observations, infos, active=None)   # -> list[str | None], None where inactive
    agent.last_traces                                  # list[StepTrace], one per env that acted in the last call
    agent.override_action(i, action)                   # slot i really took `action` (e.g. a human overruled it)
    agent.stats                                        # AgentStats: steps, parse_failures, faults, fallbacks,
                                                       #   tokens_in, tokens_out, rounds
    agent.name                                         # "dag", "direct", "random", "walkthrough", "human"

LLM agents (DAGAgent, DirectAgent) also have `agent.backend` and `agent.config`; a DAGAgent has
`agent.dag` (QuestionDAG: nodes, generations, sink) and `agent.prepare()` (run/load the context
reading step now instead of on the first step; returns a ContextResult).

Traces (agents/trace.py), JSON-ready through `to_dict()`:

    StepTrace: agent, env_index, step, observation, action, answer, parse_method, parse_failed,
               fallback, faults (list[str]), nodes (list[NodeTrace]), rounds, latency_s, context_s,
               tokens_in / tokens_out (sums over nodes), provenance (exact / word / fuzzy / choice /
               fallback, or random / walkthrough / text / typed)
    NodeTrace: node (DAG node id, or "answer"), question (filled), request (messages or prompt, ...),
               answer, tokens_in, tokens_out, latency_s, finish_reason, error, attempts, round, metadata
    NodeTrace.token_actions() -> [(token text, latent action, log-prob), ...] per generated token
               (BWArea backend only; empty for other backends)

Backends share `complete(requests: list[CompletionRequest]) -> list[Completion]` (never raises for a
failed request: `Completion.error` is set; raises BackendUnavailable once `max_failed_rounds`
consecutive rounds failed entirely, when that circuit breaker is set), `check()` (health check: one
tiny request, BackendUnavailable if it fails), `choose(requests, options) -> list[Choice | None]`
(the likeliest of each request's options; answer_format: choice), `rounds` (sequential calls) and `usage`:
TransformersBackend (local HF model directory or GGUF file), OpenAIBackend (OpenAI-compatible HTTP
server), BWAreaBackend (this project's BWArea and AR models). `make_backend({"type": ..., ...})`
builds one from a config section.

Modules: llm (request/completion types, Backend), local_backend, transformers_backend,
prefix_cache, http_backend, bwarea_backend, dag (question DAGs and their batched execution),
context (SPRING's reading step and its cache), parsing (answer -> action), base (agent protocol),
dag_agent, direct_agent, baselines (random, walkthrough, human), trace (step records), factory
(agents and backends from YAML). User guide: docs/agents.md.
"""

import importlib

# name -> the module defining it, imported on first use: `import agents` stays light (no torch until a model
# backend is asked for)
_EXPORTS = {
    "Agent": "agents.base", "LLMAgent": "agents.base", "LLMAgentConfig": "agents.base",
    "HumanAgent": "agents.baselines", "HumanAgentConfig": "agents.baselines", "RandomAgent": "agents.baselines",
    "RandomAgentConfig": "agents.baselines", "WalkthroughAgent": "agents.baselines",
    "WalkthroughAgentConfig": "agents.baselines", "BWAreaBackend": "agents.bwarea_backend",
    "BWAreaBackendConfig": "agents.bwarea_backend", "ContextConfig": "agents.context",
    "ContextResult": "agents.context", "build_context": "agents.context", "DAGError": "agents.dag",
    "QuestionDAG": "agents.dag", "run_dag": "agents.dag", "DAGAgent": "agents.dag_agent",
    "DAGAgentConfig": "agents.dag_agent", "DirectAgent": "agents.direct_agent",
    "DirectAgentConfig": "agents.direct_agent", "AGENTS": "agents.factory", "BACKENDS": "agents.factory",
    "load_config": "agents.factory", "make_agent": "agents.factory", "make_backend": "agents.factory",
    "OpenAIBackend": "agents.http_backend", "OpenAIConfig": "agents.http_backend", "Backend": "agents.llm",
    "BackendUnavailable": "agents.llm", "Choice": "agents.llm", "Completion": "agents.llm",
    "CompletionRequest": "agents.llm", "Message": "agents.llm", "ParsedAction": "agents.parsing",
    "parse_action": "agents.parsing", "parse_action_faithful": "agents.parsing", "AgentStats": "agents.trace",
    "NodeTrace": "agents.trace", "StepTrace": "agents.trace", "TransformersBackend": "agents.transformers_backend",
    "TransformersConfig": "agents.transformers_backend",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AGENTS", "Agent", "AgentStats", "BACKENDS", "BWAreaBackend", "BWAreaBackendConfig", "Backend",
    "BackendUnavailable", "Choice", "Completion",
    "CompletionRequest", "ContextConfig", "ContextResult", "DAGAgent", "DAGAgentConfig", "DAGError", "DirectAgent",
    "DirectAgentConfig", "HumanAgent", "HumanAgentConfig", "LLMAgent", "LLMAgentConfig", "Message", "NodeTrace",
    "OpenAIBackend", "OpenAIConfig", "ParsedAction", "QuestionDAG", "RandomAgent", "RandomAgentConfig", "StepTrace",
    "TransformersBackend", "TransformersConfig", "WalkthroughAgent", "WalkthroughAgentConfig", "build_context",
    "load_config", "make_agent", "make_backend", "parse_action", "parse_action_faithful", "run_dag",
]
