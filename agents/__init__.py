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

from agents.base import Agent, LLMAgent, LLMAgentConfig
from agents.baselines import (HumanAgent, HumanAgentConfig, RandomAgent, RandomAgentConfig, WalkthroughAgent,
                              WalkthroughAgentConfig)
from agents.bwarea_backend import BWAreaBackend, BWAreaBackendConfig
from agents.context import ContextConfig, ContextResult, build_context
from agents.dag import DAGError, QuestionDAG, run_dag
from agents.dag_agent import DAGAgent, DAGAgentConfig
from agents.direct_agent import DirectAgent, DirectAgentConfig
from agents.factory import AGENTS, BACKENDS, load_config, make_agent, make_backend
from agents.http_backend import OpenAIBackend, OpenAIConfig
from agents.llm import Backend, BackendUnavailable, Choice, Completion, CompletionRequest, Message
from agents.parsing import ParsedAction, parse_action, parse_action_faithful
from agents.trace import AgentStats, NodeTrace, StepTrace
from agents.transformers_backend import TransformersBackend, TransformersConfig

__all__ = [
    "AGENTS", "Agent", "AgentStats", "BACKENDS", "BWAreaBackend", "BWAreaBackendConfig", "Backend",
    "BackendUnavailable", "Choice", "Completion",
    "CompletionRequest", "ContextConfig", "ContextResult", "DAGAgent", "DAGAgentConfig", "DAGError", "DirectAgent",
    "DirectAgentConfig", "HumanAgent", "HumanAgentConfig", "LLMAgent", "LLMAgentConfig", "Message", "NodeTrace",
    "OpenAIBackend", "OpenAIConfig", "ParsedAction", "QuestionDAG", "RandomAgent", "RandomAgentConfig", "StepTrace",
    "TransformersBackend", "TransformersConfig", "WalkthroughAgent", "WalkthroughAgentConfig", "build_context",
    "load_config", "make_agent", "make_backend", "parse_action", "parse_action_faithful", "run_dag",
]
