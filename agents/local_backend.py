"""What the in-process backends share: prompt rendering, left-padded batches, stop strings, bookkeeping.

A batch of requests is split into groups that can share one `generate` call (same temperature and
stop strings; up to `max_batch_size` rows). Each group generates up to its largest `max_tokens`;
`_generate` gets every row's own budget (the transformers backend ends a row there, so a call stops
once every row is done) and rows are cut to their own budget afterwards. Chat requests use the
tokenizer's chat template when it has one (and `chat_template` is on); otherwise they are rendered
as plain "Role: content" text ending in "Assistant:" (see `llm.render_plain_chat`). Prompts longer
than the model's context minus the generation budget lose their oldest tokens; the completion's
metadata says how many (`prompt_truncated`).

`choose(requests, options)` (answer_format: choice) scores every option as the model's reply, log p(option |
prompt) = the sum of its tokens' log-probabilities (each backend's `_option_log_likelihoods`), and picks the
highest; the prompt keeps its newest tokens that leave room for the longest option.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.llm import Backend, Choice, Completion, CompletionRequest, failed, render_plain_chat, trim_at_stop


@dataclass
class GeneratedRow:
    """One row of a generate call: its new token ids (EOS / stop token included) and extras."""

    token_ids: list[int]
    stopped: bool                       # ended on EOS or a stop string (not the length limit)
    metadata: dict[str, Any] = field(default_factory=dict)  # lists are per token and cut with the tokens


class LocalBackend(Backend):
    """Base class of in-process backends; subclasses set `self.model` and `self.device` and implement `_generate`."""

    def __init__(self, tokenizer: Any, max_context: int, max_batch_size: int, use_chat_template: bool, seed: int) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.max_batch_size = max_batch_size
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.seed = seed
        self._calls = 0

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._calls = 0

    def where(self) -> str:
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"{self.name} on {self.device} ({dtype}); torch threads: {torch.get_num_threads()}"

    def render(self, request: CompletionRequest) -> tuple[str, bool]:
        """(prompt text, whether it already holds the special tokens of a chat template)."""
        if request.prompt is not None:
            return request.prompt, False
        if self.use_chat_template:
            messages = [m.to_dict() for m in request.messages]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
        return render_plain_chat(request.messages), False

    def _encode(self, texts: list[tuple[str, bool]], budget: int) -> tuple[list[list[int]], list[int]]:
        """Token ids of each prompt, keeping its newest `budget` tokens; also the tokens dropped per row."""
        rows, dropped = [], []
        for text, templated in texts:
            ids = self.tokenizer(text, add_special_tokens=not templated)["input_ids"] or [self._fallback_id]
            dropped.append(max(0, len(ids) - budget))
            rows.append(ids[-budget:])
        return rows, dropped

    @property
    def _fallback_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._fallback_id

    def left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) with every row right-aligned."""
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        return input_ids, mask

    def _complete(self, requests: list[CompletionRequest]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.temperature, request.stop), []).append(i)
        for (temperature, stop), indices in groups.items():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start:start + self.max_batch_size]
                for i, completion in zip(chunk, self._run_group([requests[i] for i in chunk], temperature, stop)):
                    results[i] = completion
        return results

    def _run_group(self, requests: list[CompletionRequest], temperature: float, stop: tuple[str, ...]) -> list[Completion]:
        max_new = max(r.max_tokens for r in requests)
        budget = self.max_context - max_new
        if budget < 1:
            return [failed(f"max_tokens={max_new} leaves no room for a prompt in a context of {self.max_context} tokens.")
                    for _ in requests]
        start = time.perf_counter()
        try:
            prompts, dropped = self._encode([self.render(r) for r in requests], budget)
            self._calls += 1
            # a private RNG stream per call: reproducible sampling without touching the caller's global state
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + self._calls)
                rows = self._generate(prompts, [r.max_tokens for r in requests], temperature, stop)
        except (RuntimeError, ValueError) as error:  # e.g. out of memory, or a tokenizer refusing a prompt
            return [failed(f"{type(error).__name__}: {error}", time.perf_counter() - start) for _ in requests]
        elapsed = time.perf_counter() - start
        completions = []
        for request, row, prompt, lost in zip(requests, rows, prompts, dropped):
            ids = row.token_ids[:request.max_tokens]
            stopped = row.stopped and len(row.token_ids) <= request.max_tokens
            text, hit = trim_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), request.stop)
            metadata: dict[str, Any] = {key: value[:len(ids)] if isinstance(value, list) else value
                                        for key, value in row.metadata.items()}
            if lost:
                metadata["prompt_truncated"] = lost
            completions.append(Completion(
                text=text, tokens_in=len(prompt), tokens_out=len(ids), latency_s=elapsed,
                finish_reason="stop" if stopped or hit else "length", metadata=metadata))
        return completions

    @abstractmethod
    def _generate(self, prompts: list[list[int]], budgets: list[int], temperature: float,
                  stop: tuple[str, ...]) -> list[GeneratedRow]:
        """Continue each prompt (token ids, unpadded) by up to its budget of new tokens (rows may return more:
        they are cut afterwards)."""

    def choose(self, requests: Sequence[CompletionRequest], options: Sequence[Sequence[str]]) -> list[Choice | None]:
        """Per request, the option with the highest log p(option | prompt) (module docstring)."""
        start = time.perf_counter()
        choices = [self._choose_one(request, list(opts)) for request, opts in zip(requests, options)]
        self._account([choice.completion for choice in choices], time.perf_counter() - start)
        return choices

    def _choose_one(self, request: CompletionRequest, options: list[str]) -> Choice:
        if not options:
            raise ValueError("choose needs at least one option per request.")
        option_ids = [self.tokenizer(option, add_special_tokens=False)["input_ids"] or [self._fallback_id]
                      for option in options]
        [prompt], [lost] = self._encode([self.render(request)], self.max_context - max(map(len, option_ids)))
        start = time.perf_counter()
        scores: dict[str, float] = {}
        for option, score in zip(options, self._option_log_likelihoods(prompt, option_ids)):
            scores.setdefault(option, score)
        best = max(scores, key=scores.get)
        metadata: dict[str, Any] = {"choice_scores": {option: round(score, 4) for option, score in scores.items()}}
        if lost:
            metadata["prompt_truncated"] = lost
        completion = Completion(text=best, tokens_in=len(prompt), tokens_out=0, finish_reason="choice",
                                latency_s=time.perf_counter() - start, metadata=metadata)
        return Choice(best, scores, completion)

    @abstractmethod
    def _option_log_likelihoods(self, prompt: list[int], option_ids: list[list[int]]) -> list[float]:
        """log p(option | prompt) for each option (token ids; the prompt unpadded, at least one token)."""
