"""Question DAGs: nodes are questions, edges say which answers a question builds on.

A DAG is declared in YAML (see configs/agents/spring.yaml):

    nodes:
      - id: objects
        question: "List the objects you can see ..."
      - id: object_reqs
        question: "For each object you listed, ..."
        parents: [objects]              # order kept: parents' Q/A appear in the prompt in this order
        max_tokens: 64                  # optional per-node budget

Validation: unique ids, every parent declared, no cycle, exactly one sink (the node whose answer is
the final one), and questions use only the placeholders {actions} and {task}. networkx lists
predecessors in edge-insertion order, so the declared parent order is stored explicitly.

Prompt layouts (`layout`):
- "compact" (ours): system text + background context as one system message, then ONE user message
  with the recent observations, the question/answer pairs of the node's direct parents and its own
  question; nodes may set their own token budget (`max_tokens`).
- "spring" (as published): the persona, the context and the recent observations as three system
  messages, then each parent's question and answer as a real user/assistant turn, then the node's own
  question as the last user message; per-node budgets are ignored (every node gets the agent's
  `max_tokens`; set it as large as the model's context allows).

`run_dag` executes a DAG for many environments at once: by topological generations, with every node
of a generation for every environment in ONE batched backend call ("batched"), or one request per
call, node by node and environment by environment ("sequential", for comparison). With `options`, the
sink is answered by choosing among the valid answers (`llm.answer_requests`, answer_format: choice).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from agents.llm import Backend, CompletionRequest, Message, answer_requests
from agents.trace import NodeTrace
from common.errors import InvalidInput, MissingInput, UserError

PLACEHOLDERS = ("actions", "task")
EXECUTION_MODES = ("batched", "sequential")
LAYOUTS = ("compact", "spring")


class DAGError(UserError, ValueError):
    """A question DAG declaration that cannot be used."""


@dataclass(frozen=True)
class Node:
    id: str
    question: str
    parents: tuple[str, ...] = ()
    max_tokens: int | None = None


def check_placeholders(text: str, where: str) -> None:
    """Raise a clear error unless `text` uses only the placeholders {actions} and {task} (braces otherwise doubled)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:
        raise DAGError(f"{where}: {error}; write literal braces as {{{{ and }}}}.") from None
    if names - set(PLACEHOLDERS):
        raise DAGError(f"{where} uses unknown placeholder(s) {sorted(names - set(PLACEHOLDERS))}; "
                       f"available: {{{'}, {'.join(PLACEHOLDERS)}}}.")


def fill(text: str, variables: Mapping[str, str]) -> str:
    """Replace {actions} / {task} in a question or system text."""
    return text.format_map({name: variables.get(name, "") for name in PLACEHOLDERS})


class QuestionDAG:
    def __init__(self, nodes: Sequence[Node], name: str = "dag") -> None:
        self.name = name
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            if not node.id or not node.question.strip():
                raise DAGError(f"{name}: every node needs a non-empty id and question (got id={node.id!r}).")
            if node.id in self.nodes:
                raise DAGError(f"{name}: node id {node.id!r} is declared twice; ids must be unique.")
            check_placeholders(node.question, f"{name}: node {node.id!r}")
            self.nodes[node.id] = node
        if not self.nodes:
            raise DAGError(f"{name}: a DAG needs at least one node.")
        self.graph = nx.DiGraph()
        self.graph.add_nodes_from(self.nodes)
        for node in self.nodes.values():
            for parent in node.parents:
                if parent not in self.nodes:
                    raise DAGError(f"{name}: node {node.id!r} names unknown parent {parent!r}; declared nodes: "
                                   f"{', '.join(self.nodes)}.")
                if parent == node.id or node.parents.count(parent) > 1:
                    raise DAGError(f"{name}: node {node.id!r} lists parent {parent!r} more than once or itself.")
                self.graph.add_edge(parent, node.id)
        if not nx.is_directed_acyclic_graph(self.graph):
            cycle = " -> ".join(edge[0] for edge in nx.find_cycle(self.graph))
            raise DAGError(f"{name}: the dependencies form a cycle ({cycle}); a question cannot depend on itself.")
        sinks = [n for n in self.nodes if self.graph.out_degree(n) == 0]
        if len(sinks) != 1:
            raise DAGError(f"{name}: a DAG needs exactly one sink (the node giving the final answer); found "
                           f"{len(sinks)}: {', '.join(sinks)}. Make the other nodes parents of the final one.")
        self.sink = sinks[0]
        declared = {node_id: i for i, node_id in enumerate(self.nodes)}
        self.generations: list[list[str]] = [sorted(g, key=declared.get) for g in nx.topological_generations(self.graph)]
        self.order: list[str] = [node_id for generation in self.generations for node_id in generation]

    @property
    def num_edges(self) -> int:
        return self.graph.number_of_edges()

    def parents(self, node_id: str) -> tuple[str, ...]:
        """Direct parents in declared order."""
        return self.nodes[node_id].parents

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "dag") -> "QuestionDAG":
        if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
            raise DAGError(f"{name}: a DAG declaration is a mapping with a `nodes` list.")
        nodes = []
        for i, entry in enumerate(data["nodes"]):
            if not isinstance(entry, Mapping):
                raise DAGError(f"{name}: node #{i} must be a mapping with id, question, parents (optional).")
            extra = set(entry) - {"id", "question", "parents", "max_tokens"}
            if extra:
                raise DAGError(f"{name}: node #{i} has unknown key(s) {sorted(extra)}; "
                               "allowed: id, question, parents, max_tokens.")
            parents = entry.get("parents") or []
            if isinstance(parents, str) or not isinstance(parents, list):
                raise DAGError(f"{name}: node {entry.get('id')!r}: parents must be a list of node ids.")
            nodes.append(Node(str(entry.get("id", "")), str(entry.get("question", "")), tuple(map(str, parents)),
                              entry.get("max_tokens")))
        return cls(nodes, name=str(data.get("name", name)))

    @classmethod
    def load(cls, source: Mapping[str, Any] | str | Path) -> "QuestionDAG":
        """From a declaration (mapping with `nodes`) or a YAML file holding one at the top level, under `dag:`,
        or under `agent: dag:` (an agent config file)."""
        name = "dag"
        if not isinstance(source, Mapping):
            path = Path(source)
            if not path.is_file():
                raise MissingInput(f"DAG file {path} does not exist; give a YAML file with a `nodes` list.")
            source, name = yaml.safe_load(path.read_text(encoding="utf-8")), path.stem
        if isinstance(source, Mapping) and isinstance(source.get("agent"), Mapping) and "dag" in source["agent"]:
            source = source["agent"]["dag"]
        if isinstance(source, Mapping) and "dag" in source:
            source = source["dag"]
        return cls.from_dict(source, name=str(source.get("name", name)) if isinstance(source, Mapping) else name)


@dataclass
class DAGInput:
    """What one environment contributes to its prompts."""

    system: str                      # system text, placeholders already filled
    context: str                     # background knowledge (SPRING: read from the manual); may be empty
    observations: str                # recent observations, oldest first
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class DAGResult:
    answers: dict[str, str]
    traces: list[NodeTrace]
    rounds: int                      # sequential backend calls the whole run made

    def failed_nodes(self) -> list[str]:
        return [trace.node for trace in self.traces if trace.error]


_ANSWER_LABEL = re.compile(r"^\s*(?:(?:A|Answer)\s*:\s*)+", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """The answer without surrounding space and without an "A:" / "Answer:" label that small models copy
    from the Q/A pairs in their prompt."""
    return _ANSWER_LABEL.sub("", text.strip()).strip()


def node_request(dag: QuestionDAG, node_id: str, state: DAGInput, answers: Mapping[str, str], max_tokens: int,
                 temperature: float, stop: Sequence[str] = (), layout: str = "compact") -> CompletionRequest:
    node = dag.nodes[node_id]
    if layout == "spring":
        messages = [Message("system", state.system)]
        if state.context:
            messages.append(Message("system", f"Background knowledge:\n{state.context}"))
        messages.append(Message("system", f"Recent observations:\n{state.observations}"))
        for parent in node.parents:
            messages += [Message("user", fill(dag.nodes[parent].question, state.variables)),
                         Message("assistant", answers.get(parent, "").strip())]
        messages.append(Message("user", fill(node.question, state.variables)))
        return CompletionRequest(messages=tuple(messages), max_tokens=max_tokens, temperature=temperature,
                                 stop=tuple(stop))
    system = state.system + (f"\n\nBackground knowledge:\n{state.context}" if state.context else "")
    parts = [f"Recent observations:\n{state.observations}"]
    if node.parents:
        pairs = [f"Q: {fill(dag.nodes[p].question, state.variables)}\nA: {answers.get(p, '').strip()}" for p in node.parents]
        parts.append("Answers so far:\n" + "\n\n".join(pairs))
    parts.append(f"Question: {fill(node.question, state.variables)}")
    return CompletionRequest(messages=(Message("system", system), Message("user", "\n\n".join(parts))),
                             max_tokens=node.max_tokens or max_tokens, temperature=temperature, stop=tuple(stop))


def run_dag(dag: QuestionDAG, backend: Backend, states: Sequence[DAGInput], max_tokens: int = 64,
            temperature: float = 0.0, mode: str = "batched", stop: Sequence[str] = (), layout: str = "compact",
            options: Sequence[Sequence[str] | None] | None = None) -> list[DAGResult]:
    """Answer every node of `dag` for every state; one DAGResult per state. Where `options[i]` lists valid
    answers, state i's sink is answered by choosing among them (`llm.answer_requests`)."""
    if mode not in EXECUTION_MODES:
        raise InvalidInput(f"execution mode {mode!r} is unknown; choose one of: {', '.join(EXECUTION_MODES)}.")
    if layout not in LAYOUTS:
        raise InvalidInput(f"prompt layout {layout!r} is unknown; choose one of: {', '.join(LAYOUTS)}.")
    answers: list[dict[str, str]] = [{} for _ in states]
    traces: list[list[NodeTrace]] = [[] for _ in states]
    if mode == "batched":
        waves = [[(i, node_id) for i in range(len(states)) for node_id in generation] for generation in dag.generations]
    else:
        waves = [[(i, node_id)] for i in range(len(states)) for node_id in dag.order]
    for round_index, wave in enumerate(waves):
        requests = [node_request(dag, node_id, states[i], answers[i], max_tokens, temperature, stop, layout)
                    for i, node_id in wave]
        choices = [options[i] if options is not None and node_id == dag.sink else None for i, node_id in wave]
        for (i, node_id), request, completion in zip(wave, requests, answer_requests(backend, requests, choices)):
            trace = NodeTrace.of(node_id, request, completion, round_index,
                                 question=fill(dag.nodes[node_id].question, states[i].variables))
            trace.answer = answers[i][node_id] = clean_answer(completion.text)
            traces[i].append(trace)
    return [DAGResult(answers[i], traces[i], len(waves)) for i in range(len(states))]
