"""What one agent step leaves behind: prompts and answers per node, the parsed action, tokens, latency, faults.

    trace = agent.last_traces[0]                 # StepTrace: one environment, one step
    trace.action, trace.answer, trace.parse_method, trace.fallback, trace.faults
    for node in trace.nodes:                     # NodeTrace: one backend request (a DAG node, or "answer")
        print(node.node, node.question, "->", node.answer)
        for token, action, log_prob in node.token_actions():   # BWArea backend only, else empty
            ...

Records are plain dataclasses; `to_dict()` gives JSON-ready data (`json.dumps(trace.to_dict())`), one
line per step in a JSONL log is the intended storage.

`NodeTrace.metadata` is what the backend reported beyond text and token counts. In-process backends:
`prompt_truncated` (prompt tokens dropped to fit the context), `shared_prefix_tokens` /
`reused_prefix_tokens` (transformers prefix caching). The BWArea backend, per generated token and
aligned with each other: `token_ids`, `tokens` (each token decoded alone), `actions` (the latent
cognitive action the policy chose for that token), `action_log_probs` (its log-probability), `action_top`
(the policy's 5 most likely actions there, most likely first) and `action_top_probs` (their probabilities at
temperature 1). These lists cover every generated token, including a stop string's tokens that `answer` no
longer shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agents.llm import Completion, CompletionRequest
from agents.parsing import PROVENANCE


@dataclass
class NodeTrace:
    """One backend request: the DAG node (or "answer" for single-prompt agents) and what came back."""

    node: str
    request: dict[str, Any]          # CompletionRequest.to_dict(): messages or prompt, max_tokens, ...
    answer: str
    question: str = ""               # the DAG node's question as asked (placeholders filled); "" for single prompts
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    error: str | None = None
    attempts: int = 1
    round: int = 0                   # which sequential backend round of the step answered it
    metadata: dict[str, Any] = field(default_factory=dict)   # backend extras (see module docstring)

    @classmethod
    def of(cls, node: str, request: CompletionRequest, completion: Completion, round: int = 0,
           question: str = "") -> "NodeTrace":
        return cls(node=node, request=request.to_dict(), answer=completion.text.strip(), question=question,
                   tokens_in=completion.tokens_in, tokens_out=completion.tokens_out, latency_s=completion.latency_s,
                   finish_reason=completion.finish_reason, error=completion.error, attempts=completion.attempts,
                   round=round, metadata=completion.metadata)

    def token_actions(self) -> list[tuple[str, int, float]]:
        """(token text, latent action, its log-probability) per generated token; empty unless the backend is
        BWArea (the AR baseline, transformers and HTTP backends have no latent actions)."""
        meta = self.metadata
        if "actions" not in meta:
            return []
        return list(zip(meta["tokens"], meta["actions"], meta["action_log_probs"]))


@dataclass
class StepTrace:
    agent: str
    env_index: int
    step: int                        # steps taken in this environment's episode before this one
    observation: str
    action: str
    answer: str = ""                 # the text the action was parsed from
    parse_method: str = "none"       # exact / final / earliest / fuzzy / faithful / choice / text / failed / none
    parse_failed: bool = False
    fallback: bool = False           # the action is the configured fallback (fault or parse failure)
    faults: list[str] = field(default_factory=list)
    nodes: list[NodeTrace] = field(default_factory=list)
    rounds: int = 0                  # sequential backend rounds this step waited for
    latency_s: float = 0.0           # wall time of the agent's decision for the whole batch it was part of
    context_s: float = 0.0           # the step that built the agent's context: the time that took (not in latency_s)

    @property
    def provenance(self) -> str:
        """How the action was obtained: exact / word / fuzzy / choice / fallback (LLM agents), text, random,
        walkthrough, typed (see agents.parsing.PROVENANCE)."""
        return "fallback" if self.fallback else PROVENANCE.get(self.parse_method, self.parse_method)

    @property
    def tokens_in(self) -> int:
        return sum(node.tokens_in for node in self.nodes)

    @property
    def tokens_out(self) -> int:
        return sum(node.tokens_out for node in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tokens_in"], data["tokens_out"], data["provenance"] = self.tokens_in, self.tokens_out, self.provenance
        return data


@dataclass
class AgentStats:
    """Running totals over every step an agent took."""

    steps: int = 0
    parse_failures: int = 0
    faults: int = 0                  # steps with at least one failed backend request
    fallbacks: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rounds: int = 0
    provenance: dict[str, int] = field(default_factory=dict)   # steps per way the action was obtained

    def add(self, trace: StepTrace) -> None:
        self.steps += 1
        self.provenance[trace.provenance] = self.provenance.get(trace.provenance, 0) + 1
        self.parse_failures += trace.parse_failed
        self.faults += bool(trace.faults)
        self.fallbacks += trace.fallback
        self.tokens_in += trace.tokens_in
        self.tokens_out += trace.tokens_out

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "provenance": dict(self.provenance)}
