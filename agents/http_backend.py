"""Any OpenAI-compatible HTTP server as a backend: vLLM, llama.cpp server, Ollama, hosted APIs.

    backend = OpenAIBackend(OpenAIConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"))

Chat requests go to `<base_url>/chat/completions`, raw prompts to `<base_url>/completions`. The
requests of one `complete` call run concurrently (at most `concurrency` at a time), so a server
that batches (vLLM) sees them together. A request that fails with HTTP 429 or 5xx, a timeout, a
refused or dropped connection or a malformed JSON body is retried up to `max_retries` times with
exponential backoff and jitter (a 429's Retry-After is honoured, capped at `max_backoff_s`); other
4xx errors are not retried. What still fails comes back as a Completion with `error` set, never as
an exception. Empty content is an answer, not a failure: the server works. With `retry_empty` a
sampled request (temperature > 0) that comes back empty is asked again, and the last answer is
returned even if it is still empty; a greedy request's empty answer is returned at once, since the
same prompt gives the same answer.

The API key is read from the environment variable named by `api_key_env` (the config holds only the
variable's name); it is sent as a Bearer token and never logged, printed or stored elsewhere. Every
error message is redacted before it leaves the backend (`redact`): the key itself, and anything that
looks like a credential (an Authorization header, "Bearer ...", "api_key": ..., sk-...), so a server
that echoes the request's headers in its error body cannot put the key into faults or episode logs.

`choose(requests, options)` (answer_format: choice) asks for one token with `logprobs` and
`top_logprobs`, the options listed under letters A, B, ...: the letter with the highest log-probability
wins. A server that returns no logprobs is remembered as such, and `choose` returns None from then
on (the agent generates free text and parses it instead).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import string
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agents.llm import Backend, Choice, Completion, CompletionRequest, Message, failed, trim_at_stop
from common.errors import InvalidInput

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
ERROR_BODY_CHARS = 300
REDACTED = "[redacted]"
_CREDENTIAL = re.compile(r"(?i)(authorization|x-api-key|api[-_]?key|bearer|token)([\"']?\s*[:=]?\s*[\"']?\s*)"
                         r"(?:bearer\s+)?[^\s\"',}]+")
_SECRET_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")
CHOICE_LABELS = string.ascii_uppercase
TOP_LOGPROBS = 20


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without the given secrets and without anything shaped like a credential."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _SECRET_KEY.sub(REDACTED, text)


@dataclass
class OpenAIConfig:
    """base_url: the server's API root including /v1 (e.g. http://127.0.0.1:8000/v1).
    model: model name the server expects. api_key_env: NAME of the environment variable holding the key
    (None for servers without authentication). timeout_s: per socket operation (connect, each read).
    max_retries: retries after the first attempt. backoff_s / max_backoff_s: first and largest wait.
    concurrency: requests in flight at once. retry_empty: ask a sampled request (temperature > 0) again while
    its answer is empty (within max_retries; an answer still empty is returned as it is, never as an error).
    extra_body: more JSON fields for every request (e.g. {"top_p": 0.9, "seed": 0}).
    seed: of the backoff jitter (not sent to the server; use extra_body for that)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    concurrency: int = 8
    retry_empty: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class _Fatal(Exception):
    pass


class OpenAIBackend(Backend):
    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        if not config.base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"base_url {config.base_url!r} must start with http:// or https://.")
        if config.concurrency < 1 or config.max_retries < 0 or config.timeout_s <= 0:
            raise InvalidInput("OpenAIConfig needs concurrency >= 1, max_retries >= 0 and timeout_s > 0.")
        self._api_key: str | None = None
        if config.api_key_env:
            self._api_key = os.environ.get(config.api_key_env)
            if not self._api_key:
                raise InvalidInput(f"environment variable {config.api_key_env} (named by api_key_env) is not set; "
                                   "export the API key there, or set api_key_env to null for servers without a key.")
        self.config = config
        self.name = f"openai:{config.base_url.rstrip('/')}:{config.model}"
        self._random = random.Random(config.seed)
        self.offers_logprobs: bool | None = None     # unknown until the first choose()
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="openai-backend")

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def where(self) -> str:
        return f"model {self.config.model!r} on the server at {self.config.base_url}"

    def _complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        return list(self._pool.map(self._complete_one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _body(self, request: CompletionRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.config.model, "max_tokens": request.max_tokens,
                                "temperature": request.temperature, **self.config.extra_body}
        if request.stop:
            body["stop"] = list(request.stop)
        if request.messages is not None:
            body["messages"] = [m.to_dict() for m in request.messages]
            return "chat/completions", body
        body["prompt"] = request.prompt
        return "completions", body

    def _complete_one(self, request: CompletionRequest, extra: dict[str, Any] | None = None) -> Completion:
        endpoint, body = self._body(request)
        body.update(extra or {})
        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                completion = self._parse(self._post(endpoint, body), chat=request.messages is not None)
                completion.text, hit = trim_at_stop(completion.text, request.stop)
                if hit:
                    completion.finish_reason = "stop"
                if not completion.text.strip() and self.config.retry_empty and request.temperature > 0 \
                        and attempts <= self.config.max_retries:
                    raise _Retryable("the server returned empty content to a sampled request")
                completion.attempts, completion.latency_s = attempts, time.perf_counter() - start
                return completion
            except _Fatal as error:
                return failed(self._redact(str(error)), time.perf_counter() - start, attempts)
            except _Retryable as error:
                if attempts > self.config.max_retries:
                    return failed(self._redact(f"{error} (gave up after {attempts} attempts)"),
                                  time.perf_counter() - start, attempts)
                time.sleep(self._backoff(attempts, error.wait_s))

    def _redact(self, text: str) -> str:
        return redact(text, (self._api_key,) if self._api_key else ())

    def choose(self, requests: list[CompletionRequest], options: list[list[str]]) -> list[Choice | None]:
        """Per request, the option whose letter gets the highest first-token log-probability (module docstring)."""
        return list(self._pool.map(self._choose_one, requests, options))

    def _choose_one(self, request: CompletionRequest, options: list[str]) -> Choice | None:
        if self.offers_logprobs is False or request.messages is None or not 1 <= len(options) <= len(CHOICE_LABELS):
            return None
        labels = CHOICE_LABELS[:len(options)]
        listing = "\n".join(f"{label}) {option}" for label, option in zip(labels, options))
        last = request.messages[-1]
        asked = CompletionRequest(
            messages=request.messages[:-1] + (Message(last.role, f"{last.content}\n\nOptions:\n{listing}\n"
                                                                  "Reply with the letter of your choice only."),),
            max_tokens=1, temperature=0.0)
        completion = self._complete_one(asked, {"logprobs": True, "top_logprobs": TOP_LOGPROBS})
        self._account([completion], completion.latency_s)
        if completion.error:
            return Choice("", {}, completion)
        top = completion.metadata.pop("top_logprobs", None)
        if top is None:
            self.offers_logprobs = False
            return None
        self.offers_logprobs = True
        scores: dict[str, float] = {}
        for token, log_prob in top:
            label = token.strip().rstrip(").:")
            if label in labels and options[labels.index(label)] not in scores:
                scores[options[labels.index(label)]] = float(log_prob)
        if not scores:   # no option among the most likely tokens: leave it to free text
            return None
        best = max(scores, key=scores.get)
        completion.text, completion.finish_reason = best, "choice"
        completion.metadata.update(choice_scores=scores, choice_request=asked.to_dict())
        return Choice(best, scores, completion)

    def _backoff(self, attempt: int, wait_s: float | None) -> float:
        if wait_s is not None:
            return min(max(wait_s, 0.0), self.config.max_backoff_s)
        delay = min(self.config.backoff_s * 2 ** (attempt - 1), self.config.max_backoff_s)
        return delay * self._random.uniform(0.5, 1.0)

    def _post(self, endpoint: str, body: dict[str, Any]) -> bytes:
        url = f"{self.config.base_url.rstrip('/')}/{endpoint}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = error.read(ERROR_BODY_CHARS).decode("utf-8", "replace").strip()
            message = f"HTTP {error.code} from {url}: {detail or error.reason}"
            if error.code in RETRY_STATUS:
                retry_after = error.headers.get("Retry-After") if error.headers else None
                raise _Retryable(message, float(retry_after) if retry_after and retry_after.isdigit() else None)
            raise _Fatal(message)
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"timed out after {self.config.timeout_s} s waiting for {url}")
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.config.timeout_s} s connecting to {url}")
            raise _Retryable(f"cannot reach {url}: {reason}")
        except (ConnectionError, http.client.HTTPException) as error:
            raise _Retryable(f"connection to {url} failed: {type(error).__name__}: {error}")

    def _parse(self, raw: bytes, chat: bool) -> Completion:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _Retryable(f"malformed response ({type(error).__name__}: {error}): {raw[:ERROR_BODY_CHARS]!r}")
        if text is None or not isinstance(text, str):
            text = ""
        usage = data.get("usage") or {}
        completion = Completion(text=text, tokens_in=int(usage.get("prompt_tokens") or 0),
                                tokens_out=int(usage.get("completion_tokens") or 0),
                                finish_reason="length" if choice.get("finish_reason") == "length" else "stop")
        content = (choice.get("logprobs") or {}).get("content") if chat else None
        if content and isinstance(content, list) and isinstance(content[0], dict) and content[0].get("top_logprobs"):
            completion.metadata["top_logprobs"] = [(entry.get("token", ""), entry.get("logprob", -1e9))
                                                   for entry in content[0]["top_logprobs"]]
        return completion
