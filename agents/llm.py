"""The one interface every language-model backend offers: `complete(requests) -> completions`, batched.

A `CompletionRequest` holds either chat `messages` or a raw `prompt`, plus `max_tokens`,
`temperature` (0 = greedy) and `stop` strings. A `Completion` holds the text (stop string trimmed),
tokens in/out, latency, a finish reason ("stop", "length" or "error") and, after a failure that
retries could not fix, the `error` message with empty text. Backends never raise for a failed
request: agents read `error` and fall back, so a run never crashes on a flaky server.

Two exceptions to "never raises", both for an unusable backend rather than one bad request:
`check()` (a health check: one tiny request) raises `BackendUnavailable` when it fails, and with a
circuit breaker set (`max_failed_rounds`), `complete` raises `BackendUnavailable` once that many
consecutive rounds failed entirely, naming the backend and the last error, so an evaluation against a
dead server stops at once instead of playing fallback actions for hours.

`choose(requests, options)` picks one of a fixed set of answers by the backend's likelihood (local
models: one batched scoring pass; OpenAI-compatible servers: first-token logprobs over labelled
options); it returns None where a backend cannot score, and the agent then parses free text.

Backends: `TransformersBackend` (local Hugging Face causal LM, directory or GGUF file),
`OpenAIBackend` (any OpenAI-compatible HTTP server), `BWAreaBackend` (this project's BWArea and AR
models). Every backend counts its sequential `rounds` (calls of `complete`) and token `usage`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role {self.role!r} is not one of {', '.join(ROLES)}.")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class CompletionRequest:
    """Chat `messages` or a raw `prompt` (exactly one of them), and how to continue it."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a CompletionRequest needs exactly one of `messages` (chat) or `prompt` (raw text).")
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(
                m if isinstance(m, Message) else Message(**m) for m in self.messages))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON form for traces."""
        body: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature, "stop": list(self.stop)}
        if self.messages is not None:
            body["messages"] = [m.to_dict() for m in self.messages]
        else:
            body["prompt"] = self.prompt
        return body


@dataclass
class Completion:
    text: str
    tokens_in: int = 0           # 0 when a server does not report usage
    tokens_out: int = 0
    latency_s: float = 0.0       # local backends: the whole batched call; HTTP: this request incl. retries
    finish_reason: str = "stop"  # "stop" (EOS or stop string), "length" or "error"
    error: str | None = None
    attempts: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)  # BWArea: per-token cognitive actions

    @property
    def ok(self) -> bool:
        return self.error is None


def failed(error: str, latency_s: float = 0.0, attempts: int = 1) -> Completion:
    return Completion(text="", finish_reason="error", error=error, latency_s=latency_s, attempts=attempts)


def render_plain_chat(messages: Sequence[Message]) -> str:
    """Chat messages as plain text for models without a chat template:
    one "Role: content" block per message, then "Assistant:" for the model to continue."""
    blocks = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join(blocks) + "\n\nAssistant:"


def trim_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class BackendUnavailable(RuntimeError):
    """The backend cannot serve requests at all (health check failed, or the circuit breaker tripped)."""


HEALTH_CHECK = CompletionRequest(messages=(Message("user", "Reply with the word OK."),), max_tokens=1)


@dataclass
class Choice:
    """What `Backend.choose` picked: one of the options, each option's score (log-likelihood, higher is
    better) and the completion behind it (text = the chosen option; tokens, latency, metadata)."""

    option: str
    scores: dict[str, float]
    completion: Completion


@dataclass
class Usage:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Backend(ABC):
    """Base class: `complete` does the bookkeeping, subclasses implement `_complete`."""

    name: str = "backend"

    def __init__(self) -> None:
        self.rounds = 0          # sequential calls of complete(): the latency-relevant count
        self.usage = Usage()
        self.max_failed_rounds: int | None = None   # the circuit breaker (None: off)
        self.failed_rounds = 0   # consecutive rounds in which every request failed
        self._lock = threading.Lock()

    def complete(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        """Complete every request; one entry per request, in order. Never raises for a failed request."""
        requests = list(requests)
        if not requests:
            return []
        start = time.perf_counter()
        completions = self._complete(requests)
        if len(completions) != len(requests):
            raise RuntimeError(f"{type(self).__name__} returned {len(completions)} completions for {len(requests)} requests.")
        self._account(completions, time.perf_counter() - start)
        return completions

    def _account(self, completions: Sequence[Completion], elapsed: float) -> None:
        """Bookkeeping of one round (rounds, usage, the circuit breaker); raises BackendUnavailable when it trips."""
        with self._lock:
            self.rounds += 1
            for completion in completions:
                if not completion.latency_s:
                    completion.latency_s = elapsed
                self.usage.requests += 1
                self.usage.errors += completion.error is not None
                self.usage.tokens_in += completion.tokens_in
                self.usage.tokens_out += completion.tokens_out
            self.failed_rounds = self.failed_rounds + 1 if all(c.error for c in completions) else 0
            tripped = self.max_failed_rounds is not None and self.failed_rounds >= self.max_failed_rounds
        if tripped:
            raise BackendUnavailable(f"{self.name} failed {self.failed_rounds} consecutive rounds (circuit breaker "
                                     f"max_failed_rounds={self.max_failed_rounds}); last error: {completions[-1].error}")

    def where(self) -> str:
        """One line saying what answers the requests and where it runs, printed when a command starts."""
        return self.name

    def check(self) -> None:
        """Health check: one tiny request; raise BackendUnavailable (naming the backend and the error) if it fails."""
        [completion] = self.complete([HEALTH_CHECK])
        if completion.error:
            raise BackendUnavailable(f"health check of {self.name} failed: {completion.error}")

    def choose(self, requests: Sequence[CompletionRequest], options: Sequence[Sequence[str]]) -> list[Choice | None]:
        """Per request, the one of its `options` the model finds most likely as its answer; None where this
        backend cannot score options (the caller then generates free text and parses it)."""
        return [None] * len(requests)

    @abstractmethod
    def _complete(self, requests: list[CompletionRequest]) -> list[Completion]: ...

    def reseed(self, seed: int) -> None:
        """Restart the sampling random stream from `seed`, so what follows depends on `seed` and the requests
        alone, not on earlier calls. In-process backends do; a remote server's sampling is out of our hands,
        so the default leaves it as it is."""

    def close(self) -> None:
        """Release resources (threads, connections); the backend is unusable afterwards."""


def answer_requests(backend: Backend, requests: Sequence[CompletionRequest],
                    options: Sequence[Sequence[str] | None] | None = None) -> list[Completion]:
    """Completions of `requests`; where `options[i]` lists valid answers, request i is answered by
    `backend.choose` (finish_reason "choice", text = the chosen option) unless the backend cannot score
    options, in which case it is completed as free text like the others."""
    options = list(options) if options is not None else [None] * len(requests)
    answers: list[Completion | None] = [None] * len(requests)
    scored = [i for i, opts in enumerate(options) if opts]
    if scored:
        for i, choice in zip(scored, backend.choose([requests[i] for i in scored], [list(options[i]) for i in scored])):
            if choice is not None:
                answers[i] = choice.completion
    rest = [i for i, answer in enumerate(answers) if answer is None]
    for i, completion in zip(rest, backend.complete([requests[i] for i in rest])):
        answers[i] = completion
    return answers
