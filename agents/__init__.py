"""Agents and LLM backends: DAG prompting, SPRING, policy agents, baselines, human play.

    import agents, envs
    agent = agents.make_agent("spring")                 # configs/agents/spring.yaml: SPRING + SmolLM2 (local)
    env = envs.make("crafter")
    obs, info = env.reset(seed=0)
    agent.reset(info)
    obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
    agent.last_traces[0].to_dict()                      # prompts, answers per node, action, tokens, latency, faults

Many environments at once: `agent.reset_batch(infos)`, `agent.act_batch(observations, infos, active)`.
Modules: llm (request/completion types, Backend), transformers_backend, http_backend, bwarea_backend,
dag (question DAGs and their batched execution), context (SPRING's reading step), parsing (answer ->
action), base (agent protocol), dag_agent, direct_agent, baselines (random, walkthrough, human),
trace (step records), factory (agents from YAML). User guide: docs/agents.md.
"""

from agents.base import Agent, LLMAgent, LLMAgentConfig
from agents.baselines import HumanAgent, RandomAgent, WalkthroughAgent
from agents.context import ContextConfig, build_context
from agents.dag import DAGError, QuestionDAG, run_dag
from agents.dag_agent import DAGAgent, DAGAgentConfig
from agents.direct_agent import DirectAgent, DirectAgentConfig
from agents.factory import load_config, make_agent, make_backend
from agents.llm import Backend, Completion, CompletionRequest, Message
from agents.parsing import parse_action, parse_action_faithful
from agents.trace import AgentStats, NodeTrace, StepTrace

__all__ = [
    "Agent", "AgentStats", "Backend", "Completion", "CompletionRequest", "ContextConfig", "DAGAgent", "DAGAgentConfig",
    "DAGError", "DirectAgent", "DirectAgentConfig", "HumanAgent", "LLMAgent", "LLMAgentConfig", "Message",
    "NodeTrace", "QuestionDAG", "RandomAgent", "StepTrace", "WalkthroughAgent", "build_context", "load_config",
    "make_agent", "make_backend", "parse_action", "parse_action_faithful", "run_dag",
]
