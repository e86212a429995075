"""Llama-style causal transformer trunk with a key/value cache.

RMSNorm, rotary position embeddings (rotate-half convention, optionally with Hugging Face's rope
scaling), SwiGLU feed-forward, grouped key/value heads (optionally with a q/k/v bias, as in Qwen2)
and PyTorch's scaled-dot-product attention. Every BWArea network and the
autoregressive baseline are built from `Transformer`.

Padding: batches may be left padded; `attention_mask` (B, T) marks real tokens. Positions are
counted over real tokens only, so a left-padded row sees the same positions as the unpadded text.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bwarea.config import TransformerConfig, check_rope_scaling


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written out: F.rms_norm is several times slower on CPU for training-sized inputs
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).type_as(x) * self.weight


def rope_inverse_frequencies(head_dim: int, theta: float, rope_scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """(head_dim/2,) float64 rotation speeds w_i = theta^(-2i/head_dim), rescaled as Hugging Face's
    rope scaling types do (transformers.modeling_rope_utils; none of these scales the attention):

    - "default": unchanged;
    - "linear": w_i / factor (positions interpolated `factor` times more densely);
    - "llama3": with wavelength lambda_i = 2 pi / w_i and the original context C,
      lambda_i < C / high_freq_factor keeps w_i; lambda_i > C / low_freq_factor gets w_i / factor;
      in between, w_i ((1 - s) / factor + s) with s = (C / lambda_i - low_freq_factor) / (high_freq_factor - low_freq_factor).
    """
    check_rope_scaling(rope_scaling)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    rope_type = "default" if rope_scaling is None else rope_scaling["rope_type"]
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        factor, context = rope_scaling["factor"], rope_scaling["original_max_position_embeddings"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        wavelength = 2 * math.pi / inv_freq
        smooth = (context / wavelength - low) / (high - low)
        blended = ((1 - smooth) / factor + smooth) * inv_freq
        scaled = torch.where(wavelength > context / low, inv_freq / factor, blended)
        return torch.where(wavelength < context / high, inv_freq, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Precomputed tables rotating feature pairs (i, i + head_dim/2) of queries and keys.

    The usual x*cos + rotate_half(x)*sin, with rotate_half(x) = [-x2, x1], is computed as
    x*cos + roll(x, head_dim/2)*[-sin, sin]: fewer kernel launches, which matters when decoding.
    Rotation speeds: `rope_inverse_frequencies` (rope_scaling as in Hugging Face configs).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, rope_scaling: dict[str, Any] | None = None):
        super().__init__()
        inv_freq = rope_inverse_frequencies(head_dim, theta, rope_scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", torch.cat([angles.cos(), angles.cos()], dim=-1).float(), persistent=False)
        self.register_buffer("sin", torch.cat([-angles.sin(), angles.sin()], dim=-1).float(), persistent=False)

    @property
    def max_positions(self) -> int:
        return self.cos.shape[0]

    def forward(self, positions: torch.Tensor, checked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) or (T,) -> cos, signed sin broadcastable to (B, T, heads, head_dim).

        checked=False skips the range check (a host sync) for callers that bound the positions themselves.
        """
        if checked and positions.numel() and int(positions.max()) >= self.max_positions:
            raise ValueError(
                f"position {int(positions.max())} exceeds max_position_embeddings={self.max_positions}; "
                "shorten the input or build the model with a larger max_position_embeddings."
            )
        return self.cos[positions].unsqueeze(-2), self.sin[positions].unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, head_dim) by the tables of `RotaryEmbedding`."""
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin).to(x.dtype)


class _StaticBufferPool:
    """Buffers of finished static caches, handed to the next static cache of the same shapes.

    CUDA graphs replay on fixed addresses: a step recorded on one cache's buffers records again for
    another's (and torch stops using CUDA graphs for a function after 128 such re-recordings), so each
    `generate` call takes over the buffers of the previous one. Buffers come back when their cache is
    garbage collected, filed under the network the cache served and their shapes, so a decoder's
    caches get the buffers they had last time. Those of the `max_kinds` most recent kinds are kept
    (the memory of that many caches stays allocated).
    """

    def __init__(self, max_kinds: int = 8):
        self.max_kinds = max_kinds
        self.free: OrderedDict[tuple, deque[list[torch.Tensor]]] = OrderedDict()

    def take(self, kind: tuple) -> list[torch.Tensor] | None:
        buffers = self.free.get(kind)
        return buffers.popleft() if buffers else None

    def give(self, kind: tuple, buffers: list[torch.Tensor]) -> None:
        self.free.setdefault(kind, deque()).append(buffers)
        self.free.move_to_end(kind)
        while len(self.free) > self.max_kinds:
            self.free.popitem(last=False)


_STATIC_BUFFERS = _StaticBufferPool()


class KVCache:
    """Preallocated keys and values for all layers of one trunk.

    `valid` marks which slots hold real tokens (left padding stays invalid) and `next_position`
    holds, per row, the rotary position the next token will get.

    A *static* cache (after `make_static`) runs every single-token call as a decoding step whose shapes and
    control flow never depend on how full it is, so torch.compile and CUDA graphs capture it once:
    the slot index lives in a tensor (`slot`), the new keys are written with `index_copy_`, and the
    query attends over all `capacity` slots with `valid` as the mask (unfilled slots are invalid).
    Contract: on a static cache every single-token call is one real token per row (any mask is
    ignored) and calls of several tokens (the prompt) come before the first single-token call.
    """

    def __init__(self, config: TransformerConfig, batch_size: int, max_length: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
        # one tensor per layer, not views of one: a compiled step then updates each in place, where
        # writing into a view of a graph input copies the whole layer every step
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # `length` as a tensor, for static steps
        self.length = 0
        self.static = False

    def make_static(self, owner: nn.Module) -> None:
        """Run single-token calls as static-shape steps from now on (call it before the first call; see above).

        The buffers become those of an earlier static cache of the same `owner` (the network the cache
        serves) and shapes if one was freed (`_StaticBufferPool`), zeroed, and are marked static for
        torch.compile: CUDA graphs then update them in place instead of copying them in and out every step.
        """
        layers = len(self.keys)
        buffers = [*self.keys, *self.values, self.valid, self.next_position, self.slot]
        kind = (id(owner), layers, tuple(self.keys[0].shape), tuple(self.valid.shape), self.keys[0].dtype,
                self.keys[0].device)
        reused = _STATIC_BUFFERS.take(kind)
        if reused is not None:
            for buffer in reused:
                buffer.zero_()
            buffers = reused
            self.keys, self.values = buffers[:layers], buffers[layers:2 * layers]
            self.valid, self.next_position, self.slot = buffers[2 * layers:]
        for buffer in buffers:
            torch._dynamo.mark_static_address(buffer)
        weakref.finalize(self, _STATIC_BUFFERS.give, kind, buffers)
        self.static = True

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def reserve(self, token_mask: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Claim slots for T new tokens (token_mask (B, T) marks real ones); return start slot and positions."""
        steps = token_mask.shape[1]
        start = self.length
        if start + steps > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; cannot append {steps} more after {start}.")
        self.valid[:, start:start + steps] = token_mask
        positions = self.next_position[:, None] + token_mask.long().cumsum(-1) - 1
        positions = positions.clamp(min=0)
        self.next_position += token_mask.long().sum(-1)
        self.length = start + steps
        if self.static:
            self.slot.fill_(self.length)
        return start, positions

    def reserve_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim the next slot for one real token per row (static caches); return the slot (1,) and positions (B, 1).

        No host-side state changes (`length` stays at the prompt's end), so the caller bounds the slot
        by the capacity it allocated.
        """
        slot, positions = self.slot.clone(), self.next_position[:, None].clone()
        self.valid.index_fill_(1, slot, True)
        self.next_position += 1
        self.slot += 1
        return slot, positions

    def store(self, layer: int, start: int | torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values (B, kv_heads, T, head_dim) from slot `start`; return the layer's keys and values
        up to the last written slot, or all `capacity` slots for a static step (`start` a tensor)."""
        layer_keys, layer_values = self.keys[layer], self.values[layer]
        if isinstance(start, torch.Tensor):
            layer_keys.index_copy_(2, start, keys)
            layer_values.index_copy_(2, start, values)
            return layer_keys, layer_values
        end = start + keys.shape[2]
        layer_keys[:, :, start:end] = keys
        layer_values[:, :, start:end] = values
        return layer_keys[:, :, :end], layer_values[:, :, :end]


@dataclass
class AttentionInputs:
    """What every layer needs for one forward call: rotary tables, mask and the cache slots."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None  # (B, 1, T, K) bool, True = may attend; None = no padding to hide
    causal: bool               # with mask None: causal among the T new tokens (keys = queries), else see all keys
    cache: KVCache | None = None
    start: int | torch.Tensor = 0  # first cache slot of the new tokens; a (1,) tensor in a static step


def _padding_aware_causal_mask(key_valid: torch.Tensor, start: int, steps: int) -> torch.Tensor:
    """(B, 1, steps, start+steps) mask: causal, real keys only, and every query sees itself.

    Letting a query always see its own slot keeps fully padded rows finite (no all -inf softmax);
    their outputs are never used.
    """
    total = start + steps
    query_slots = torch.arange(start, total, device=key_valid.device)
    key_slots = torch.arange(total, device=key_valid.device)
    causal = key_slots[None, :] <= query_slots[:, None]
    own_slot = key_slots[None, :] == query_slots[:, None]
    mask = (causal[None] & key_valid[:, None, :total]) | own_slot[None]
    return mask[:, None]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, (config.num_heads + 2 * config.num_kv_heads) * self.head_dim,
                             bias=config.attention_bias)
        self.out = nn.Linear(config.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, layer: int) -> torch.Tensor:
        batch, steps, _ = x.shape
        heads = self.num_heads + self.num_kv_heads
        qkv = self.qkv(x).view(batch, steps, heads + self.num_kv_heads, self.head_dim)
        qk = apply_rotary(qkv[:, :, :heads], inputs.cos, inputs.sin).transpose(1, 2)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads:]
        v = qkv[:, :, heads:].transpose(1, 2)
        if inputs.cache is not None:
            k, v = inputs.cache.store(layer, inputs.start, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask, is_causal=inputs.causal,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.out(y.transpose(1, 2).reshape(batch, steps, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), inputs, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Token embedding, `num_layers` blocks and a final RMSNorm (no output head)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        weight = self.embed.weight
        dtype = torch.get_autocast_dtype(weight.device.type) if torch.is_autocast_enabled(weight.device.type) else weight.dtype
        return KVCache(self.config, batch_size, max_length, dtype, weight.device)

    def attention_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         cache: KVCache | None = None) -> AttentionInputs:
        """Positions, rotary tables and mask for `input_ids` (B, T); reserves cache slots if a cache is given."""
        batch, steps = input_ids.shape
        if cache is not None and cache.static and steps == 1:
            # static step: positions never exceed slots, so a cache that fits the rotary tables needs no
            # range check per step (a host sync)
            if cache.capacity > self.rope.max_positions:
                raise ValueError(f"a static KV cache of {cache.capacity} slots exceeds max_position_embeddings="
                                 f"{self.rope.max_positions}; allocate at most that many slots.")
            start, positions = cache.reserve_token()
            cos, sin = self.rope(positions, checked=False)
            return AttentionInputs(cos, sin, cache.valid[:, None, None, :], causal=False, cache=cache, start=start)
        if cache is not None:
            token_mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            start, positions = cache.reserve(token_mask)
            cos, sin = self.rope(positions)
            if bool(cache.valid[:, : start + steps].all()) and (start == 0 or steps == 1):
                # no padding anywhere: a fresh prompt is plainly causal; one new token sees every cached key
                return AttentionInputs(cos, sin, None, causal=start == 0, cache=cache, start=start)
            mask = _padding_aware_causal_mask(cache.valid, start, steps)
            return AttentionInputs(cos, sin, mask, causal=False, cache=cache, start=start)
        if attention_mask is None or bool(attention_mask.all()):
            cos, sin = self.rope(torch.arange(steps, device=input_ids.device))
            return AttentionInputs(cos, sin, None, causal=True)
        token_mask = attention_mask.bool()
        positions = (token_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rope(positions)
        return AttentionInputs(cos, sin, _padding_aware_causal_mask(token_mask, 0, steps), causal=False)

    def run_blocks(self, hidden: torch.Tensor, inputs: AttentionInputs, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = len(self.blocks) if stop is None else stop
        for layer in range(start, stop):
            hidden = self.blocks[layer](hidden, inputs, layer)
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        inputs = self.attention_inputs(input_ids, attention_mask, cache)
        return self.norm(self.run_blocks(self.embed(input_ids), inputs))


def init_weights(module: nn.Module, std: float, num_layers: int) -> None:
    """Normal(0, std) for linear and embedding weights; residual output projections scaled by 1/sqrt(2L)."""
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            scale = 1 / math.sqrt(2 * num_layers) if name.endswith(("attn.out", "mlp.down")) else 1.0
            nn.init.normal_(sub.weight, mean=0.0, std=std * scale)
            if isinstance(sub, nn.Linear) and sub.bias is not None:
                nn.init.zeros_(sub.bias)
