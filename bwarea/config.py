"""Typed configurations for the BWArea model and the equal-size autoregressive baseline.

One width is shared by all three BWArea networks (as in the released model); each network has its
own depth. Presets:

- ``tiny``  ~4M parameters in all (world model ~1.8M): tests and CPU quickstart.
- ``small`` ~23M parameters in all: CPU experiments of an hour or so.
- ``1b``    the released shapes (TinyLlama-1.1B trunk; world model 22 layers, inverse dynamics 11,
            policy 22, 64 actions): GPU only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from common.errors import InvalidInput


@dataclass
class TransformerConfig:
    """Shape of one causal Llama-style trunk (token embedding, blocks, final norm).

    attention_bias: a bias on the fused q/k/v projection (the Qwen2 family); the output projection never has one.
    rope_scaling: Hugging Face's rope scaling dict, e.g. {"rope_type": "llama3", "factor": 8.0, ...};
        None (or rope_type "default") is plain RoPE. Supported types: ROPE_SCALING_KEYS.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_attention_shape(self.hidden_size, self.num_heads, self.num_kv_heads)
        check_rope_scaling(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# rope_type -> the keys of a Hugging Face rope scaling dict it needs (besides "rope_type")
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(rope_scaling: dict[str, Any] | None) -> None:
    """ValueError unless `rope_scaling` is None or a rope scaling dict of a supported rope_type with its keys."""
    if rope_scaling is None:
        return
    if not isinstance(rope_scaling, dict):
        raise InvalidInput(f"rope_scaling must be a dict like {{'rope_type': 'linear', 'factor': 2.0}} or None, got {rope_scaling!r}.")
    rope_type = rope_scaling.get("rope_type")
    if rope_type not in ROPE_SCALING_KEYS:
        raise InvalidInput(f"rope_scaling rope_type {rope_type!r} is not supported; supported types are "
                           f"{', '.join(repr(name) for name in ROPE_SCALING_KEYS)}.")
    missing = [key for key in ROPE_SCALING_KEYS[rope_type] if key not in rope_scaling]
    if missing:
        raise InvalidInput(f"rope_scaling of rope_type {rope_type!r} needs {', '.join(repr(key) for key in missing)}; got {rope_scaling!r}.")


def _check_attention_shape(hidden_size: int, num_heads: int, num_kv_heads: int) -> None:
    if hidden_size % num_heads:
        raise InvalidInput(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}.")
    if num_heads % num_kv_heads:
        raise InvalidInput(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads} (grouped KV heads).")
    if (hidden_size // num_heads) % 2:
        raise InvalidInput(f"head size hidden_size/num_heads={hidden_size // num_heads} must be even for rotary embeddings.")


@dataclass
class BaseModelConfig:
    """Fields and helpers shared by both model configs (serialised to config.json).

    attention_bias and rope_scaling: see TransformerConfig (set when a trunk starts from a Qwen2 or a
    Llama 3.x checkpoint; the defaults are what every from-scratch model uses).
    """

    vocab_size: int = 4096
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 352
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    model_type: str = dataclasses.field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        _check_attention_shape(self.hidden_size, self.num_heads, self.num_kv_heads)
        check_rope_scaling(self.rope_scaling)
        for name in ("vocab_size", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be positive, got {getattr(self, name)}.")

    def trunk(self, num_layers: int) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            attention_bias=self.attention_bias,
            rope_scaling=self.rope_scaling,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.init}


@dataclass
class BWAreaConfig(BaseModelConfig):
    """World model + inverse dynamics + cognitive policy sharing one width and one action codebook.

    world_layers: depth of the language world model; actions are injected before layer world_layers // 2.
    inverse_layers: depth of the inverse dynamics trunk (half the world model in the release).
    policy_layers: depth of the cognitive policy trunk.
    num_actions: K, the number of latent cognitive actions (codebook rows).
    code_dim: D, dimension of the code space the inverse dynamics quantises into.
    codebook_update: "loss" (codebook + commitment losses) or "ema" (exponential moving averages of
        assigned features; only the commitment loss is back-propagated).
    commitment_beta: weight of the commitment term beta * ||z - sg(e)||^2.
    ema_decay: decay of the EMA codebook statistics (codebook_update="ema").
    usage_decay: decay of the per-code usage average used to find dead codes.
    dead_code_threshold: a code whose average share of assignments falls below
        dead_code_threshold / num_actions is dead and may be restarted.
    """

    world_layers: int = 4
    inverse_layers: int = 2
    policy_layers: int = 4
    num_actions: int = 64
    code_dim: int = 32
    codebook_update: Literal["loss", "ema"] = "loss"
    commitment_beta: float = 0.25
    ema_decay: float = 0.99
    usage_decay: float = 0.99
    dead_code_threshold: float = 0.03

    model_type: str = dataclasses.field(default="bwarea", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.world_layers < 2:
            raise InvalidInput(f"world_layers must be at least 2 so actions can enter mid-network, got {self.world_layers}.")
        for name in ("inverse_layers", "policy_layers", "num_actions", "code_dim"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.codebook_update not in ("loss", "ema"):
            raise InvalidInput(f"codebook_update must be 'loss' or 'ema', got {self.codebook_update!r}.")

    @property
    def injection_layer(self) -> int:
        """Index of the first world-model layer that sees the action."""
        return self.world_layers // 2

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BWAreaConfig":
        if name not in BWAREA_PRESETS:
            raise InvalidInput(f"unknown BWArea preset {name!r}; choose one of {sorted(BWAREA_PRESETS)}.")
        return cls(**{**BWAREA_PRESETS[name], **overrides})


@dataclass
class ARConfig(BaseModelConfig):
    """Plain autoregressive Llama-style language model (the comparison baseline)."""

    num_layers: int = 4

    model_type: str = dataclasses.field(default="bwarea-ar", init=False, repr=False)

    @classmethod
    def matching(cls, config: BWAreaConfig) -> "ARConfig":
        """The AR model with the world model's shape (same width, depth, vocabulary and context)."""
        shared = {name: getattr(config, name) for name in BaseModelConfig.field_names()}
        return cls(num_layers=config.world_layers, **shared)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ARConfig":
        """The AR model matching the world model of BWArea preset `name`, with AR fields overridden."""
        return dataclasses.replace(cls.matching(BWAreaConfig.preset(name)), **overrides)


BWAREA_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=4096, hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=352,
        world_layers=4, inverse_layers=2, policy_layers=4, num_actions=64, code_dim=32,
        max_position_embeddings=512,
    ),
    "small": dict(
        vocab_size=8192, hidden_size=256, num_heads=8, num_kv_heads=4, intermediate_size=688,
        world_layers=8, inverse_layers=4, policy_layers=8, num_actions=64, code_dim=64,
        max_position_embeddings=1024,
    ),
    "1b": dict(
        vocab_size=32000, hidden_size=2048, num_heads=32, num_kv_heads=4, intermediate_size=5632,
        world_layers=22, inverse_layers=11, policy_layers=22, num_actions=64, code_dim=256,
        max_position_embeddings=2048,
    ),
}
