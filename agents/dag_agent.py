"""DAG prompting agents: SPRING on Crafter, chain-of-thought DAGs on TextWorld and BIG-Bench Hard.

    agent = DAGAgent(backend, DAGAgentConfig(dag="configs/agents/spring.yaml", context=ContextConfig()))

At every step the agent answers the question DAG for each environment of the batch (nodes of one
topological generation across all environments go to the backend in one call, see agents/dag.py)
and turns the sink's answer into an action. With a `context` the agent first runs SPRING's reading
step on the document (agents/context.py, cached on disk) and shows the result to every node.
A node whose request failed is recorded as a fault and answered with an empty string; its children
still run. If the sink failed, the step takes the fallback action. Failed reading requests are
recorded as a fault of the step that read the document (the incomplete context is used, not cached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agents.base import LLMAgent, LLMAgentConfig, Slot, build_dataclass
from agents.context import ContextConfig, ContextResult, build_context, load_document
from agents.dag import EXECUTION_MODES, LAYOUTS, DAGInput, QuestionDAG, fill, run_dag
from agents.llm import Backend
from agents.trace import StepTrace
from common.errors import InvalidInput


@dataclass
class DAGAgentConfig(LLMAgentConfig):
    """dag: the DAG declaration (a mapping with `nodes`) or a path to a YAML file holding one (top level
    or under `dag:`). context: SPRING's reading step (None: no background context).
    execution: "batched" (by topological generations, across environments) or "sequential".
    prompt_layout: "compact" (ours: one user message, per-node token budgets) or "spring" (the original's
    message structure, no per-node budget; see agents/dag.py)."""

    dag: dict[str, Any] | str | None = None
    context: ContextConfig | None = None
    execution: str = "batched"
    prompt_layout: str = "compact"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dag is None:
            raise InvalidInput("a DAG agent needs `dag`: a mapping with `nodes`, or a path to a YAML file with one.")
        if self.execution not in EXECUTION_MODES:
            raise InvalidInput(f"execution {self.execution!r} is unknown; choose one of {', '.join(EXECUTION_MODES)}.")
        if self.prompt_layout not in LAYOUTS:
            raise InvalidInput(f"prompt_layout {self.prompt_layout!r} is unknown; choose one of {', '.join(LAYOUTS)}.")
        if isinstance(self.context, dict):
            self.context = build_dataclass(ContextConfig, self.context, "agent (dag) context")


class DAGAgent(LLMAgent):
    name = "dag"

    def __init__(self, backend: Backend, config: DAGAgentConfig) -> None:
        super().__init__(backend, config)
        self.config: DAGAgentConfig = config
        self.dag = QuestionDAG.load(config.dag)
        self.context: ContextResult | None = None
        self.context_seconds = 0.0      # wall time of building the context (reading, or loading it from the cache)
        self._unreported_reading = False

    def prepare(self) -> ContextResult | None:
        """Build (or load from the cache) the background context now rather than on the first step."""
        if self.config.context is not None and self.context is None:
            start = time.perf_counter()
            self.context = build_context(load_document(self.config.context.document), self.backend, self.config.context)
            self.context_seconds = time.perf_counter() - start
            self._unreported_reading = True
        return self.context

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        reading, self._unreported_reading = self._unreported_reading, False
        context = self.prepare()
        states = []
        for slot, info in zip(slots, infos):
            variables = self.variables(info)
            states.append(DAGInput(system=fill(self.config.system, variables), context=context.text if context else "",
                                   observations=self.recent(slot), variables=variables))
        results = run_dag(self.dag, self.backend, states, self.config.max_tokens, self.config.temperature,
                          self.config.execution, self.config.stop, self.config.prompt_layout,
                          [self.options(info) for info in infos])
        for trace, result, info in zip(traces, results, infos):
            trace.nodes = result.traces
            trace.faults = [f"node {t.node}: {t.error}" for t in result.traces if t.error]
            if reading:
                trace.context_s = self.context_seconds
            if reading and context is not None and context.errors:   # the step that read the document says so
                trace.faults.insert(0, f"context: {len(context.errors)} reading request(s) failed, e.g. "
                                       f"{context.errors[0]}; the context is incomplete and was not cached")
            sink = next(t for t in result.traces if t.node == self.dag.sink)
            self.resolve(trace, sink.answer, sink.error, info, chosen=sink.finish_reason == "choice")
        return results[0].rounds if results else 0
