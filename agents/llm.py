"""The one interface every language-model backend offers: `complete(requests) -> completions`, batched.

A `CompletionRequest` holds either chat `messages` or a raw `prompt`, plus `max_tokens`,
`temperature` (0 = greedy) and `stop` strings. A `Completion` holds the text (stop string trimmed),
tokens in/out, latency, a finish reason ("stop", "length" or "error") and, after a failure that
retries could not fix, the `error` message with empty text. Backends never raise for a failed
request: agents read `error` and fall back, so a run never crashes on a flaky server.

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
        elapsed = time.perf_counter() - start
        with self._lock:
            self.rounds += 1
            for completion in completions:
                if not completion.latency_s:
                    completion.latency_s = elapsed
                self.usage.requests += 1
                self.usage.errors += completion.error is not None
                self.usage.tokens_in += completion.tokens_in
                self.usage.tokens_out += completion.tokens_out
        return completions

    @abstractmethod
    def _complete(self, requests: list[CompletionRequest]) -> list[Completion]: ...

    def reseed(self, seed: int) -> None:
        """Restart the sampling random stream from `seed`, so what follows depends on `seed` and the requests
        alone, not on earlier calls. In-process backends do; a remote server's sampling is out of our hands,
        so the default leaves it as it is."""

    def close(self) -> None:
        """Release resources (threads, connections); the backend is unusable afterwards."""
