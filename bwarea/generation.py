"""Batched generation with KV caches for BWArea ("simulate an LLM") and the autoregressive baseline.

One loop drives both models through a small decoder interface, built by
`model.decoder(input_ids, attention_mask, capacity, prompt_actions=...)`:
- `action_logits(tokens, mask) -> (B, C, K)`: logits of the C choices the loop must make at this call —
  the cognitive action for BWArea (policy), the next token for the AR model. The last of them is the
  choice at the newest position; C > 1 only on the first call of a decoder that wants the prompt's
  own positions chosen too (prompt_actions="policy");
- `token_logits(tokens, mask, actions (B, C)) -> (B, V) | None`: BWArea's world-model logits given the
  chosen actions, or None for the AR model (its choice already is the token).
- `make_static(compile_mode)`: called before the first call when `generate` runs static-shape steps —
  the decoder switches its KV caches to static steps (`KVCache.make_static`) and, if compile_mode is
  not None, compiles its single-token calls (`DecodeStep`).
The first call receives the whole (left-padded) prompt; later calls one new token per row.

prompt_actions says how a latent-action model labels the prompt's own positions for its world model:
"inverse" — by the inverse dynamics, so the prompt is read as the text it is (C = 1); "policy" — by the
policy's choices, drawn like the generated actions (greedy at temperature 0, else sampled with the same
temperature, top-k, top-p and generator). The AR model has no actions and ignores it.

The output records, for every generated token, the action that produced it (the token itself for
the AR model) and log pi(action | state) under the policy at temperature 1, whatever the sampling
temperature — the quantity reward fine-tuning differentiates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, get_args

import torch

from common.errors import InvalidInput

PromptActions = Literal["inverse", "policy"]


class Decoder(Protocol):
    def action_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...  # (B, C, K)

    def token_logits(self, tokens: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None: ...

    def make_static(self, compile_mode: str | None) -> None: ...


# Rounding a compiled decoder's cache up to a multiple of this keeps the number of shapes it is
# compiled (and, with CUDA graphs, recorded) for small when prompt lengths vary from call to call.
COMPILED_CAPACITY_MULTIPLE = 64


@functools.cache
def _compiled(function: Callable, mode: str) -> Callable:
    # made once per (function, mode) and shared by every decoder: a fresh wrapper would compile again
    compiled = torch.compile(function, mode=mode, fullgraph=True)

    def run(*args: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # copies: under CUDA graphs the next replay overwrites a step's outputs (HF generate copies too)
        outputs = compiled(*args)
        return tuple(output.clone() for output in outputs) if isinstance(outputs, tuple) else outputs.clone()
    return run


class DecodeStep:
    """A decoder's forward function `function(model, inputs (B, T, ...), ...)` (inputs: new tokens or
    states): called as is for the prompt, and through torch.compile for single-position calls (T = 1)
    once `compile(mode)` was called. It must be a module-level function that gets every tensor (caches
    included) as an argument, so that one compilation serves every decoder."""

    def __init__(self, function: Callable):
        self.function = self.single_position = function

    def compile(self, mode: str | None) -> None:
        if mode is not None:
            self.single_position = _compiled(self.function, mode)

    def __call__(self, model: Any, inputs: torch.Tensor, *args: Any) -> Any:
        run = self.single_position if inputs.shape[1] == 1 else self.function
        return run(model, inputs, *args)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor        # (B, P + N) prompt (left padded) followed by generated tokens
    attention_mask: torch.Tensor   # (B, P + N) real tokens of `sequences`
    tokens: torch.Tensor           # (B, N) generated tokens (pad after a row stops)
    actions: torch.Tensor          # (B, N) action that produced each generated token
    action_log_probs: torch.Tensor  # (B, N) log pi(action | state), 0 where mask is False
    mask: torch.Tensor             # (B, N) True for tokens generated before the row stopped (stop token included)
    finished: torch.Tensor         # (B,) True when the row ended on EOS or a stop string (not the length limit)
    prompt_length: int
    top_choices: torch.Tensor | None = None       # (B, N, k) the k most likely choices (actions; AR: tokens) per step
    top_choice_probs: torch.Tensor | None = None  # (B, N, k) their probabilities at temperature 1

    def action_positions(self) -> torch.Tensor:
        """(B, P + N - 1) actions aligned with `sequences`: entry t is the action producing token t+1,
        filled only at generated positions (zeros elsewhere) — the layout `action_log_probs` of a model takes."""
        aligned = torch.zeros_like(self.sequences[:, 1:])
        aligned[:, self.prompt_length - 1:] = self.actions
        return aligned

    def action_mask(self) -> torch.Tensor:
        """(B, P + N - 1) True where `action_positions` holds a generated action."""
        aligned = torch.zeros_like(self.sequences[:, 1:], dtype=torch.bool)
        aligned[:, self.prompt_length - 1:] = self.mask
        return aligned


def choose(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Greedy (temperature 0) or sampled choice over the last dimension of `logits` (B, ..., K).

    `generator` may be one generator per row: row b then draws from generator[b] alone, so what a row samples
    does not depend on the other rows of its batch (rollouts sharded over processes sample the same episodes)."""
    if temperature < 0:
        raise InvalidInput(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_scores.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    probs = scores.softmax(-1)
    if isinstance(generator, Sequence):
        if len(generator) != probs.shape[0]:
            raise InvalidInput(f"{len(generator)} generators given for a batch of {probs.shape[0]} rows; give one per row.")
        return torch.stack([torch.multinomial(row.reshape(-1, row.shape[-1]), 1, generator=row_generator).view(row.shape[:-1])
                            for row, row_generator in zip(probs, generator)])
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _compile_mode(compile: bool | str, device: torch.device) -> str | None:
    if compile is False:
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    modes = torch._inductor.list_mode_options()
    if compile not in modes:
        raise InvalidInput(f"compile must be True, False or a torch.compile mode ({', '.join(sorted(modes))}), got {compile!r}.")
    return compile


def _forced_actions(actions: int | Sequence[int] | torch.Tensor | None, batch: int, steps: int,
                    num_choices: int, device: torch.device) -> torch.Tensor | None:
    if actions is None:
        return None
    forced = torch.as_tensor(actions, dtype=torch.long, device=device)
    if forced.dim() == 0:
        forced = forced.expand(batch, steps)
    elif forced.dim() == 1:
        if forced.shape[0] < steps:
            raise InvalidInput(f"actions has {forced.shape[0]} entries but max_new_tokens={steps}; give one action per generated token.")
        forced = forced[:steps].expand(batch, steps)
    elif forced.shape[0] != batch or forced.shape[1] < steps:
        raise InvalidInput(f"actions of shape {tuple(forced.shape)} must be (batch={batch}, >= max_new_tokens={steps}).")
    if int(forced.min()) < 0 or int(forced.max()) >= num_choices:
        raise InvalidInput(f"actions must lie in [0, {num_choices}); got values {int(forced.min())}..{int(forced.max())}.")
    return forced[:, :steps]


class _StopStrings:
    """Detects stop strings in each row's generated text by decoding only a short tail."""

    def __init__(self, stop_strings: Sequence[str], tokenizer: Any):
        if stop_strings and tokenizer is None:
            raise InvalidInput("stop_strings need a tokenizer to decode generated tokens; pass tokenizer=...")
        self.stop_strings = [s for s in stop_strings if s]
        self.tokenizer = tokenizer
        self.window = max((len(s.encode()) for s in self.stop_strings), default=0) + 1

    def hits(self, generated: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        if not self.stop_strings:
            return torch.zeros_like(active)
        # one transfer to the host for the whole batch (not one per row: each is a sync on a GPU)
        tails, rows_active = generated[:, -self.window:].tolist(), active.tolist()
        hit = [row_active and any(s in self.tokenizer.decode(tail) for s in self.stop_strings)
               for tail, row_active in zip(tails, rows_active)]
        return torch.tensor(hit, device=active.device)


@torch.no_grad()
def generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             token_temperature: float = 0.0, actions: int | Sequence[int] | torch.Tensor | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             stop_strings: Sequence[str] = (), tokenizer: Any = None,
             prompt_actions: PromptActions = "inverse",
             generator: torch.Generator | Sequence[torch.Generator] | None = None, report_top: int = 0,
             static_cache: bool | None = None, compile: bool | str = False) -> GenerationOutput:
    """Generate up to `max_new_tokens` tokens for a left-padded batch.

    temperature: sampling temperature of the choice (BWArea: the cognitive action; AR: the token);
        0 = greedy (argmax).
    top_k, top_p: optional truncation of that choice's distribution.
    token_temperature: BWArea only — how the world model emits the token given the action; 0 (default)
        = greedy, so all randomness and control live in the action.
    actions: force the choice instead of sampling it — one int for every step, a (N,) sequence for every
        row, or a (B, N) tensor. Log-probabilities of the forced actions are still reported.
    eos_token_id / stop_strings: a row stops after emitting EOS or once its text contains a stop string
        (the stopping token is kept and marked in `mask`). Defaults: the model config's eos/pad ids.
    prompt_actions: latent-action models only — how the world model's actions at the prompt's own
        positions are chosen: "inverse" (inverse-dynamics labels) or "policy" (the policy's choices,
        drawn with temperature/top_k/top_p/generator like the generated actions); see the module docstring.
    generator: torch.Generator for reproducible sampling, or a sequence of one per row (see `choose`).
    report_top: also return, per generated token, the `report_top` most likely choices and their
        probabilities at temperature 1 (`top_choices`, `top_choice_probs`; e.g. 5 for a viewer's hover).
    static_cache: run the per-token steps on static-shape KV caches (`KVCache.make_static`: the slot
        index in a tensor, attention over the whole cache under its validity mask, no host syncs), which
        torch.compile and CUDA graphs can capture; the prompt is read as before. None (default) = only
        when compiling. Needs prompt length + max_new_tokens <= max_position_embeddings (else it is off).
    compile: torch.compile the per-token steps (implies static_cache): True = mode "reduce-overhead"
        (CUDA graphs) on CUDA and "default" elsewhere, or a torch.compile mode name. The first call per
        shape compiles (seconds; the cache length is rounded up to a multiple of 64 to limit shapes),
        so it pays off over many calls, e.g. reward fine-tuning's rollouts.
    Every path computes the same conditionals up to float rounding (attention runs over a different
    number of masked slots; compiled kernels fuse differently): greedy tokens and actions agree (tested)
    unless two choices tie within rounding, and log-probabilities agree to float tolerance.
    """
    if max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if prompt_actions not in get_args(PromptActions):
        raise InvalidInput(f"prompt_actions must be one of {get_args(PromptActions)}, got {prompt_actions!r}.")
    if report_top < 0:
        raise InvalidInput(f"report_top must be >= 0 (0 = do not report), got {report_top}.")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InvalidInput(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}.")
    config = model.config
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    if not bool(attention_mask[:, -1].all()):
        raise InvalidInput("prompts must be left padded (every row's last position a real token); set tokenizer.padding_side = 'left'.")
    eos_ids = config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = torch.as_tensor([] if eos_ids is None else eos_ids, dtype=torch.long, device=device).flatten()
    pad_id = pad_token_id if pad_token_id is not None else (config.pad_token_id if config.pad_token_id is not None else 0)
    compile_mode = _compile_mode(compile, device)
    if compile_mode is not None and static_cache is False:
        raise InvalidInput("compile needs static-shape steps; leave static_cache at None (or True) when compiling.")
    capacity = prompt_length + max_new_tokens
    static = (static_cache or compile_mode is not None) and capacity <= config.max_position_embeddings
    if static and compile_mode is not None:
        rounded = -(-capacity // COMPILED_CAPACITY_MULTIPLE) * COMPILED_CAPACITY_MULTIPLE
        capacity = min(rounded, config.max_position_embeddings)
    decoder: Decoder = model.decoder(input_ids, attention_mask, capacity, prompt_actions=prompt_actions)
    if static:
        decoder.make_static(compile_mode)
    stops = _StopStrings(stop_strings, tokenizer)
    can_end = eos_ids.numel() > 0 or bool(stops.stop_strings)

    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    chosen = torch.zeros_like(tokens)
    log_probs = torch.zeros(batch, max_new_tokens, device=device)
    mask = torch.zeros(batch, max_new_tokens, dtype=torch.bool, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    top_ids = top_probs = None
    forced = None
    step_input, step_mask = input_ids, attention_mask
    one_token_mask = torch.ones(batch, 1, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        choice_logits = decoder.action_logits(step_input, step_mask).float()
        if forced is None and actions is not None:
            forced = _forced_actions(actions, batch, max_new_tokens, choice_logits.shape[-1], device)
        if forced is None:
            step_actions = choose(choice_logits, temperature, top_k, top_p, generator)
        else:  # only the newest choice is forced; prompt positions the decoder asks for are still drawn
            drawn = choose(choice_logits[:, :-1], temperature, top_k, top_p, generator)
            step_actions = torch.cat([drawn, forced[:, step, None]], dim=1)
        action = step_actions[:, -1]
        choice_log_probs = choice_logits[:, -1].log_softmax(-1)
        action_log_prob = choice_log_probs.gather(-1, action[:, None]).squeeze(-1)
        if report_top:
            if top_ids is None:
                k = min(report_top, choice_log_probs.shape[-1])
                top_ids = torch.zeros(batch, max_new_tokens, k, dtype=torch.long, device=device)
                top_probs = torch.zeros(batch, max_new_tokens, k, device=device)
            best = choice_log_probs.topk(top_ids.shape[-1], dim=-1)
            top_ids[:, step], top_probs[:, step] = best.indices, best.values.exp()
        token_logits = decoder.token_logits(step_input, step_mask, step_actions)
        token = action if token_logits is None else choose(token_logits, token_temperature, generator=generator)

        tokens[:, step] = torch.where(active, token, pad_id)
        chosen[:, step] = torch.where(active, action, 0)
        log_probs[:, step] = torch.where(active, action_log_prob, 0.0)
        mask[:, step] = active
        if can_end:  # else no row stops early: skip the host sync
            active = active & ~(torch.isin(token, eos_ids) | stops.hits(tokens[:, : step + 1], active))
            if not bool(active.any()):
                break
        step_input, step_mask = token[:, None], one_token_mask

    generated = step + 1
    tokens, chosen, log_probs, mask = (t[:, :generated] for t in (tokens, chosen, log_probs, mask))
    return GenerationOutput(
        sequences=torch.cat([input_ids, tokens], dim=1),
        attention_mask=torch.cat([attention_mask.bool(), mask], dim=1),
        tokens=tokens, actions=chosen, action_log_probs=log_probs, mask=mask,
        finished=~active, prompt_length=prompt_length,
        top_choices=None if top_ids is None else top_ids[:, :generated],
        top_choice_probs=None if top_probs is None else top_probs[:, :generated],
    )
