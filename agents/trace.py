"""What one agent step leaves behind: prompts and answers per node, the parsed action, tokens, latency, faults.

Records are plain dataclasses; `to_dict()` gives JSON-ready data (`json.dumps(trace.to_dict())`), one
line per step in a JSONL log is the intended storage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agents.llm import Completion, CompletionRequest


@dataclass
class NodeTrace:
    """One backend request: the DAG node (or "answer" for single-prompt agents) and what came back."""

    node: str
    request: dict[str, Any]          # CompletionRequest.to_dict(): messages or prompt, max_tokens, ...
    answer: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    error: str | None = None
    attempts: int = 1
    round: int = 0                   # which sequential backend round of the step answered it
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, node: str, request: CompletionRequest, completion: Completion, round: int = 0) -> "NodeTrace":
        return cls(node=node, request=request.to_dict(), answer=completion.text.strip(), tokens_in=completion.tokens_in,
                   tokens_out=completion.tokens_out, latency_s=completion.latency_s,
                   finish_reason=completion.finish_reason, error=completion.error, attempts=completion.attempts,
                   round=round, metadata=completion.metadata)


@dataclass
class StepTrace:
    agent: str
    env_index: int
    step: int                        # steps taken in this environment's episode before this one
    observation: str
    action: str
    answer: str = ""                 # the text the action was parsed from
    parse_method: str = "none"       # final / earliest / fuzzy / faithful / text / failed / none (no parsing)
    parse_failed: bool = False
    fallback: bool = False           # the action is the configured fallback (fault or parse failure)
    faults: list[str] = field(default_factory=list)
    nodes: list[NodeTrace] = field(default_factory=list)
    rounds: int = 0                  # sequential backend rounds this step waited for
    latency_s: float = 0.0           # wall time of the agent's decision for the whole batch it was part of

    @property
    def tokens_in(self) -> int:
        return sum(node.tokens_in for node in self.nodes)

    @property
    def tokens_out(self) -> int:
        return sum(node.tokens_out for node in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tokens_in"], data["tokens_out"] = self.tokens_in, self.tokens_out
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

    def add(self, trace: StepTrace) -> None:
        self.steps += 1
        self.parse_failures += trace.parse_failed
        self.faults += bool(trace.faults)
        self.fallbacks += trace.fallback
        self.tokens_in += trace.tokens_in
        self.tokens_out += trace.tokens_out

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))
