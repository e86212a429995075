"""Start from a pretrained Hugging Face causal LM: our `ARLanguageModel`, and BWArea built on it.

`load_causal_lm(source)` reads a Hugging Face model directory (config.json + safetensors, one file or
shards with an index) or a .gguf file and returns our `ARLanguageModel` with the same weights and its
tokenizer. Supported: `LlamaForCausalLM` (Llama 2/3.x, TinyLlama, SmolLM2: grouped KV heads, tied or
untied head, rope scaling "linear" and "llama3"), `Qwen2ForCausalLM` (a bias on q/k/v) and
`MistralForCausalLM`. Our blocks compute what Hugging Face's do once the projections are concatenated:

    model.embed_tokens                                      trunk.embed
    model.layers.i.input_layernorm                          trunk.blocks.i.attn_norm
    model.layers.i.self_attn.{q,k,v}_proj                   trunk.blocks.i.attn.qkv     (rows q, k, v)
    model.layers.i.self_attn.o_proj                         trunk.blocks.i.attn.out
    model.layers.i.post_attention_layernorm                 trunk.blocks.i.mlp_norm
    model.layers.i.mlp.{gate,up}_proj                       trunk.blocks.i.mlp.gate_up  (rows gate, up)
    model.layers.i.mlp.down_proj                            trunk.blocks.i.mlp.down
    model.norm                                              trunk.norm
    lm_head (absent when tied to the embedding)             lm_head

Sliding-window attention (Mistral, Qwen2 with use_sliding_window) equals our full attention as long as
the context is no longer than the window, so the context is capped to the window; asking for a longer
one is refused. Any other feature we do not implement (another activation, biases on Llama's
projections, head_dim != hidden_size / num_heads, partial rotary embeddings, other rope types) raises
a `CheckpointError` naming it.

`bwarea_from_lm(lm)` builds a BWArea model whose world model *is* the LM before any training (see its
docstring); `init_codebook_kmeans` places the K codebook rows on k-means centres of the inverse
dynamics' features of some text, so stage 1 starts with every action in use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from bwarea.autoregressive import ARLanguageModel
from bwarea.checkpoint import CheckpointError
from bwarea.codebook import usage_from_counts
from bwarea.config import ROPE_SCALING_KEYS, ARConfig, BWAreaConfig
from bwarea.model import BWAreaModel
from bwarea.tokenizer import load_tokenizer

# Hugging Face model_type -> the causal-LM architecture we convert
SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}

# tensor of one of our blocks -> the Hugging Face block tensors concatenated (along rows, in order) to make it
BLOCK_SOURCES = {
    "attn_norm.weight": ("input_layernorm.weight",),
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.out.weight": ("self_attn.o_proj.weight",),
    "mlp_norm.weight": ("post_attention_layernorm.weight",),
    "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.down.weight": ("mlp.down_proj.weight",),
}
# our tensors outside the blocks -> Hugging Face's
OUTER_SOURCES = {"trunk.embed.weight": "model.embed_tokens.weight", "trunk.norm.weight": "model.norm.weight",
                 "lm_head.weight": "lm_head.weight"}
# derived rotary tables some checkpoints store with the weights; we compute our own
ROTARY_BUFFER_SUFFIX = ".rotary_emb.inv_freq"

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


# ----------------------------------------------------------------------------------------------
# Hugging Face LM -> ARLanguageModel

def load_causal_lm(source: str | os.PathLike, *, max_position_embeddings: int | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[ARLanguageModel, PreTrainedTokenizerBase]:
    """Our ARLanguageModel with the weights of the Hugging Face causal LM at `source`, and its tokenizer.

    source: a model directory (config.json, model.safetensors or model.safetensors.index.json + shards,
        tokenizer files) or a .gguf file, which transformers loads and dequantises.
    max_position_embeddings: the context the model is built for (rotary tables are allocated for it);
        default: the checkpoint's, capped to its sliding window if it has one.
    dtype: dtype of the returned model's weights.
    The tokenizer pads on the left (pad = eos when it has no pad token) and keeps its special tokens and
    chat template; our config's eos/pad ids are the tokenizer's. Raises CheckpointError for a source that
    cannot be read or an architecture/feature we do not support.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        tokenizer = _tokenizer(path)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                            local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"transformers could not load the GGUF file {path} ({_first_line(error)}).") from None
        lm = lm_from_transformers(hf_model.config, hf_model.state_dict(), tokenizer, source=str(path),
                                  max_position_embeddings=max_position_embeddings, dtype=dtype)
        return lm, tokenizer
    if not path.is_dir():
        raise CheckpointError(f"model source {path} is neither a Hugging Face model directory nor a .gguf file; "
                              "give a local directory holding config.json and safetensors weights, or a .gguf file.")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json, so it is not a Hugging Face model directory; give the "
                              "directory a model's save_pretrained wrote (or a .gguf file).")
    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path / 'config.json'} is not a config transformers can read ({_first_line(error)}).") from None
    _check_supported(hf_config, str(path))
    weights = SafetensorsWeights(path)
    tokenizer = _tokenizer(path)
    lm = lm_from_transformers(hf_config, weights, tokenizer, source=str(path),
                              max_position_embeddings=max_position_embeddings, dtype=dtype)
    return lm, tokenizer


def lm_from_transformers(hf_config: PretrainedConfig, weights: Mapping[str, torch.Tensor],
                         tokenizer: PreTrainedTokenizerBase, *, source: str = "the checkpoint",
                         max_position_embeddings: int | None = None,
                         dtype: torch.dtype = torch.float32) -> ARLanguageModel:
    """Our ARLanguageModel from a transformers config and its state dict (Hugging Face tensor names).

    `weights` may be read lazily (each tensor is fetched once, copied and dropped); `source` names the
    checkpoint in error messages. See `load_causal_lm` for the other arguments.
    """
    config = _ar_config(hf_config, tokenizer, source=source, max_position_embeddings=max_position_embeddings)
    with _created_as(dtype, torch.device("cpu")):
        lm = ARLanguageModel(config)
    used: set[str] = set()
    with torch.no_grad():
        for name, parameter in lm.named_parameters():  # a tied head is the embedding, listed once
            sources = _hf_sources(name)
            missing = [source_name for source_name in sources if source_name not in weights]
            if missing:
                raise CheckpointError(f"{source} lacks tensor {missing[0]!r}, which {name!r} of a "
                                      f"{SUPPORTED_ARCHITECTURES[hf_config.model_type]} with this config needs.")
            tensor = torch.cat([weights[source_name] for source_name in sources])
            if tuple(tensor.shape) != tuple(parameter.shape):
                raise CheckpointError(f"{source}: tensor(s) {', '.join(sources)} have shape {tuple(tensor.shape)} but "
                                      f"its config implies {tuple(parameter.shape)} for {name!r}.")
            parameter.copy_(tensor)
            used.update(sources)
    ignored = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(name for name in set(weights) - used - ignored if not name.endswith(ROTARY_BUFFER_SUFFIX))
    if unexpected:
        raise CheckpointError(f"{source} has tensor {unexpected[0]!r} ({len(unexpected)} unexpected) that a "
                              f"{SUPPORTED_ARCHITECTURES[hf_config.model_type]} with this config does not use; "
                              "the checkpoint has a feature bwarea does not implement.")
    return lm


def _ar_config(hf_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, *, source: str,
               max_position_embeddings: int | None) -> ARConfig:
    """The ARConfig of a supported Hugging Face causal-LM config (CheckpointError for anything else)."""
    _check_supported(hf_config, source)
    context = max_position_embeddings or hf_config.max_position_embeddings
    window = _attention_window(hf_config)
    if window is not None and context > window:
        if max_position_embeddings is not None:
            raise CheckpointError(f"{source} attends within a sliding window of {window} tokens, which full attention "
                                  f"matches only up to {window} positions; pass max_position_embeddings <= {window}.")
        context = window
    rope = dict(hf_config.rope_parameters)
    rope_type = rope.get("rope_type", "default")
    vocab_size = hf_config.vocab_size
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                              f"{vocab_size} rows; the tokenizer belongs to another model.")
    try:
        return ARConfig(
            vocab_size=vocab_size, hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size, max_position_embeddings=context,
            rope_theta=float(rope["rope_theta"]), rms_norm_eps=float(hf_config.rms_norm_eps),
            attention_bias=hf_config.model_type == "qwen2",
            rope_scaling=None if rope_type == "default" else {
                "rope_type": rope_type, **{key: rope[key] for key in ROPE_SCALING_KEYS[rope_type]}},
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{source}: its config does not fit a bwarea trunk ({error}).") from None


def _check_supported(hf_config: PretrainedConfig, source: str) -> None:
    supported = ", ".join(SUPPORTED_ARCHITECTURES.values())
    architectures = getattr(hf_config, "architectures", None) or [SUPPORTED_ARCHITECTURES.get(hf_config.model_type,
                                                                                            hf_config.model_type)]
    architecture = architectures[0]
    if SUPPORTED_ARCHITECTURES.get(hf_config.model_type) != architecture:
        raise CheckpointError(f"{source} is a {architecture} (model_type {hf_config.model_type!r}); bwarea converts "
                              f"{supported}.")
    feature = _unsupported_feature(hf_config)
    if feature:
        raise CheckpointError(f"{source} is a {architecture} with {feature}, which bwarea does not implement; it "
                              f"converts {supported} with SwiGLU (silu), bias-free projections (Qwen2: q/k/v bias), "
                              "full rotary embeddings (rope types default, linear, llama3) and head_dim = hidden/heads.")


def _unsupported_feature(hf_config: PretrainedConfig) -> str | None:
    """A description of the first feature of `hf_config` our trunk does not implement, or None."""
    if hf_config.hidden_act != "silu":
        return f"activation {hf_config.hidden_act!r}"
    head_dim = getattr(hf_config, "head_dim", None)
    if hf_config.hidden_size % hf_config.num_attention_heads or (
            head_dim and head_dim != hf_config.hidden_size // hf_config.num_attention_heads):
        return (f"head_dim {head_dim} != hidden_size {hf_config.hidden_size} / num_attention_heads "
                f"{hf_config.num_attention_heads}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf_config, flag, False):
            return f"{flag}=True"
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_SCALING_KEYS:
        return f"rope_type {rope_type!r}"
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        return f"partial_rotary_factor {rope['partial_rotary_factor']}"
    return None


def _attention_window(hf_config: PretrainedConfig) -> int | None:
    """The sliding attention window of a Mistral/Qwen2 config, None when every layer attends fully."""
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def _hf_sources(name: str) -> tuple[str, ...]:
    """Hugging Face tensor names that make our ARLanguageModel tensor `name` (rows concatenated in order)."""
    if name in OUTER_SOURCES:
        return (OUTER_SOURCES[name],)
    _, _, layer, tensor = name.split(".", 3)  # trunk.blocks.<i>.<tensor>
    return tuple(f"model.layers.{layer}.{source}" for source in BLOCK_SOURCES[tensor])


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return load_tokenizer(path)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} holds no tokenizer transformers can load ({_first_line(error)}); a model "
                              "source needs its tokenizer files (e.g. tokenizer.json, tokenizer_config.json).") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class SafetensorsWeights(Mapping[str, torch.Tensor]):
    """The tensors of a Hugging Face safetensors checkpoint (model.safetensors, or shards listed in
    model.safetensors.index.json), each read from disk when asked for."""

    def __init__(self, directory: Path):
        index, single = directory / SAFETENSORS_INDEX, directory / SAFETENSORS_FILE
        try:
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self._files = {name: directory / file for name, file in weight_map.items()}
            elif single.is_file():
                with safe_open(str(single), framework="pt") as handle:
                    self._files = {name: single for name in handle.keys()}
            else:
                raise CheckpointError(f"{directory} holds no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; bwarea reads "
                                      "Hugging Face weights as safetensors only (re-save the model with save_pretrained).")
            self._handles = {file: safe_open(str(file), framework="pt") for file in set(self._files.values())}
        except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"the safetensors weights in {directory} cannot be read ({_first_line(error)}).") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._handles[self._files[name]].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


@contextmanager
def _created_as(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Create new modules' weights directly in `dtype` on `device`, so a large LM never exists twice in memory."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------------------------
# ARLanguageModel -> BWArea

def bwarea_from_lm(lm: ARLanguageModel, *, num_actions: int = 64, code_dim: int | None = None,
                   **config_overrides: Any) -> BWAreaModel:
    """A BWArea model grown from `lm` (in its dtype and on its device), equal to it before any training.

    - world model: a copy of the LM (all L layers and the head); the action enters before layer L // 2;
    - inverse dynamics: a copy of the LM's embedding, first L // 2 layers and final norm, then a fresh
      projection to the code space (code_dim D, default min(256, hidden_size));
    - policy: a copy of the whole LM trunk and a fresh K-way action head;
    - codebook (K = num_actions rows) and its up-projection: fresh (see `init_codebook_kmeans`).

    The injection adds RMSNorm(m) = g * m / rms(m), m = W [h ; e(a)], to the residual stream; its gain g
    (world.inject.norm.weight) starts at zero, so it adds exactly 0 and the world model's logits are the
    LM's, whatever the actions. The gain, not W, is zeroed: with W = 0 the RMSNorm would normalise a zero
    vector, whose direction is undefined and whose gradient is scaled by 1/sqrt(eps) (a huge first step).
    With g = 0 and W random, m / rms(m) is well defined, g receives a unit-scale gradient on the first
    step, and W starts learning as soon as g leaves zero.

    config_overrides may set BWArea's own training settings (codebook_update, commitment_beta,
    ema_decay, usage_decay, dead_code_threshold); shapes and the rest come from lm.config.
    """
    if not isinstance(lm, ARLanguageModel):
        raise ValueError(f"bwarea_from_lm needs a bwarea.ARLanguageModel, got {type(lm).__name__}; "
                         "bwarea.pretrained_lm.load_causal_lm turns a Hugging Face LM into one.")
    fixed = {"world_layers", "inverse_layers", "policy_layers"}
    own_fields = BWAreaConfig.field_names() - ARConfig.field_names() - fixed - {"num_actions", "code_dim"}
    foreign = sorted(set(config_overrides) - own_fields)
    if foreign:
        raise ValueError(f"bwarea_from_lm cannot override {foreign[0]!r}: the LM's shape and settings come from "
                         f"lm.config (world and policy get its L layers, the inverse dynamics L // 2); "
                         f"overridable fields are {sorted(own_fields)}.")
    shared = {name: getattr(lm.config, name) for name in ARConfig.field_names() - {"num_layers"}}
    depth = lm.config.num_layers
    config = BWAreaConfig(**shared, world_layers=depth, inverse_layers=depth // 2, policy_layers=depth,
                          num_actions=num_actions, code_dim=min(256, lm.config.hidden_size) if code_dim is None else code_dim,
                          **config_overrides)
    weight = lm.lm_head.weight
    with _created_as(weight.dtype, weight.device):
        model = BWAreaModel(config)
    trunk = lm.trunk.state_dict()
    with torch.no_grad():
        model.world.trunk.load_state_dict(trunk)
        model.world.lm_head.load_state_dict(lm.lm_head.state_dict())
        model.policy.trunk.load_state_dict(trunk)
        model.inverse.trunk.load_state_dict({name: tensor for name, tensor in trunk.items()
                                             if not name.startswith("blocks.") or int(name.split(".")[1]) < depth // 2})
        model.world.inject.norm.weight.zero_()
    return model


# ----------------------------------------------------------------------------------------------
# Codebook initialisation

@torch.no_grad()
def init_codebook_kmeans(model: BWAreaModel, token_batches: Iterable[torch.Tensor], *, iterations: int = 25,
                         max_features: int = 65536, generator: torch.Generator | None = None) -> dict[str, float]:
    """Put the codebook rows on k-means centres of the inverse dynamics' code-space features.

    Features z = model.inverse(batch) ((B, T-1, D) per batch of token ids (B, T), no padding) are gathered
    until `max_features` (a random subset of that size is kept when a batch overshoots); K = num_actions
    centres are seeded by k-means++ (each next seed drawn with probability proportional to its squared
    distance to the nearest seed so far) and refined by `iterations` Lloyd steps (assign each feature to
    its nearest centre, move each centre to the mean of its features); a centre left without features
    moves onto the feature farthest from its own centre. The clustering runs on the CPU in float32, so it
    is deterministic given `generator`.

    The codebook (parameter, or buffer in EMA mode) gets the centres and `usage` restarts uniform. In EMA
    mode the statistics are set as if the EMA had long averaged batches like these: ema_counts = each
    centre's expected features per batch, ema_sums = centre * ema_counts (so codebook = sums / counts).

    Returns: features (number clustered), inertia (sum of squared distances to the nearest centre),
    alive_codes (centres with at least one feature), largest_cluster_share, code_perplexity (exp of the
    entropy of the cluster sizes; K when all are equal), iterations (Lloyd steps run; fewer when the
    assignment stopped changing).
    """
    codebook = model.codebook
    num_codes = codebook.num_codes
    chunks, batches, total = [], 0, 0
    for batch in token_batches:
        if total >= max_features:
            break
        features = model.inverse(batch.to(model.codebook.up.weight.device)).reshape(-1, codebook.code_dim)
        chunks.append(features.float().cpu())
        batches += 1
        total += features.shape[0]
    if total < num_codes:
        raise ValueError(f"k-means needs at least num_actions={num_codes} features to place {num_codes} codes, got {total} "
                         "(each batch of T tokens gives T-1 per row); give more or longer token batches.")
    features = torch.cat(chunks)
    if total > max_features:
        features = features[torch.randperm(total, generator=generator)[:max_features]]
    centres = _kmeans_plus_plus(features, num_codes, generator)
    distances, assignment = _nearest(features, centres)
    steps = 0
    for steps in range(1, iterations + 1):
        counts = torch.bincount(assignment, minlength=num_codes)
        sums = torch.zeros_like(centres).index_add_(0, assignment, features)
        centres = sums / counts.clamp(min=1).unsqueeze(-1)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            centres[empty] = features[distances.topk(empty.numel()).indices]
        previous = assignment
        distances, assignment = _nearest(features, centres)
        if torch.equal(assignment, previous):
            break
    counts = torch.bincount(assignment, minlength=num_codes).float()
    usage = usage_from_counts(counts)

    target = codebook.codebook
    target.data.copy_(centres.to(device=target.device, dtype=target.dtype))
    codebook.usage.fill_(1.0 / num_codes)
    if codebook.update == "ema":
        per_batch = counts * (total / batches) / features.shape[0]
        codebook.ema_counts.copy_(per_batch)
        codebook.ema_sums.copy_(centres.to(codebook.ema_sums) * per_batch.to(codebook.ema_sums).unsqueeze(-1))
    return {"features": float(features.shape[0]), "inertia": float(distances.sum()), "alive_codes": float(usage.alive_codes),
            "largest_cluster_share": usage.largest_share, "code_perplexity": usage.perplexity, "iterations": float(steps)}


def _kmeans_plus_plus(features: torch.Tensor, num_codes: int, generator: torch.Generator | None) -> torch.Tensor:
    chosen = [int(torch.randint(features.shape[0], (1,), generator=generator))]
    nearest = (features - features[chosen[0]]).pow(2).sum(-1)
    for _ in range(1, num_codes):
        # identical features leave no distance to weigh by: draw uniformly then
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        nearest = torch.minimum(nearest, (features - features[chosen[-1]]).pow(2).sum(-1))
    return features[chosen].clone()


def _nearest(features: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance of each feature (N, D) to its nearest centre (K, D), and that centre's index."""
    squared = (features.pow(2).sum(-1, keepdim=True) - 2 * features @ centres.t() + centres.pow(2).sum(-1)).clamp(min=0)
    return squared.min(-1)
