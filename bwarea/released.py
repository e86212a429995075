"""Convert the released BWArea-2.7B checkpoint (LAMDA-RL/Pretrained_BWArea_2.7B_30G) into our format.

The release is a Hugging Face directory written by its `IntentionForCausalLM` (a `LlamaForCausalLM`
whose `model` is replaced by three Llama trunks and the action parts): config.json (a Llama config plus
`num_code` = K and `num_dim` = D), weights as safetensors or `pytorch_model*.bin` (single or sharded, with
or without an index json) and the Llama-2 tokenizer, to which its loader adds `[PAD]` and whose
vocabulary it resizes to a multiple of 8 (32001 tokens -> 32008 rows).

Release tensor names (everything but `lm_head` under `model.`) -> ours:

    transformer.{wte,h.i,ln_f}              world.trunk.{embed,blocks.i,norm}      L layers
    lm_head                                 world.lm_head
    dynamics_layer / dynamics_norm          world.inject.proj / world.inject.norm  (2H -> H; RMSNorm)
    transformer_action_enc.{wte,h.i,ln_f}   inverse.trunk                          L // 2 layers
    press_layer                             inverse.to_code                        (H -> D)
    action_code_book.embed                  codebook.codebook                      (K, D)
    unpress_layer                           codebook.up                            (D -> H)
    transformer_policy.{wte,h.i,ln_f}       policy.trunk                           L layers
    transformer_policy_layer                policy.action_head                     (H -> K)
    embed_tokens                            dropped (a scratch embedding its loader uses for resizing)

Inside `h.i` the Hugging Face Llama names map as q/k/v_proj -> attn.qkv (rows q, k, v),
o_proj -> attn.out, gate/up_proj -> mlp.gate_up (rows gate, up), down_proj -> mlp.down,
input_layernorm -> attn_norm, post_attention_layernorm -> mlp_norm. No layer has a bias.

The computations agree with ours: actions enter the world model before layer L // 2 as
h + RMSNorm(W [h ; up(e_a)]); the inverse dynamics' final features are shifted left by one position,
projected to D and quantised to the nearest codebook row; the policy's K logits pick a row directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer

from bwarea.checkpoint import CONFIG_FILE, CheckpointError, write_training_info
from bwarea.config import BWAreaConfig
from bwarea.model import BWAreaModel
from bwarea.pretrained_lm import BLOCK_SOURCES
from common.files import replace_directory

PAD_TOKEN = "[PAD]"

# our network -> the release's trunk (a ModuleDict of wte, h, ln_f)
TRUNKS = {"world": "transformer", "inverse": "transformer_action_enc", "policy": "transformer_policy"}

# tensor of one of our blocks -> the release block tensors concatenated (along rows, in order) to make it:
# the release's blocks are Hugging Face Llama blocks without biases
RELEASE_BLOCK_SOURCES = {ours: theirs for ours, theirs in BLOCK_SOURCES.items() if not ours.endswith(".bias")}

# our tensor outside the trunks -> release tensor (without the "model." prefix; lm_head never has it)
HEAD_SOURCES = {
    "world.lm_head.weight": "lm_head.weight",
    "world.inject.proj.weight": "dynamics_layer.weight",
    "world.inject.norm.weight": "dynamics_norm.weight",
    "inverse.to_code.weight": "press_layer.weight",
    "codebook.codebook": "action_code_book.embed.weight",
    "codebook.up.weight": "unpress_layer.weight",
    "policy.action_head.weight": "transformer_policy_layer.weight",
}
CODEBOOK = HEAD_SOURCES["codebook.codebook"]
SCRATCH_EMBEDDING = "embed_tokens.weight"
# derived rotary tables that older transformers versions saved with the weights; we recompute them
ROTARY_BUFFER = re.compile(r"\.self_attn\.rotary_emb\.inv_freq$")

WEIGHT_LAYOUTS = (  # (index file, weight files without an index), in the order Hugging Face prefers them
    ("model.safetensors.index.json", "*.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
)


def convert_released(source: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert the release directory `source` into a `save_pretrained` directory `out`; return `out`.

    Everything is read and checked before anything is written; `out` appears complete (model, config,
    tokenizer, training_info.json) or not at all. An existing non-empty `out` is replaced only with
    `overwrite=True`. Raises CheckpointError naming the file, field or tensors that do not fit.
    """
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; --out must name a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output directory {out} already exists and is not empty; pass overwrite=True "
                         "(--overwrite) to replace it, or choose another --out.")
    release = read_release_config(source)
    tokenizer = load_release_tokenizer(source)
    state = read_release_weights(source)
    checkpoint_config = release_model_config(release, state, tokenizer, source)
    weights = map_release_weights(state, checkpoint_config, source)
    del state  # frees the q/k/v and gate/up tensors that were joined into copies
    config = dataclasses.replace(checkpoint_config, vocab_size=release_vocab_size(checkpoint_config.vocab_size, len(tokenizer)))
    weights = resize_vocabulary(weights, config.vocab_size)
    dtype = _common_dtype(weights)
    weights = {name: tensor.to(dtype) for name, tensor in weights.items()}
    # a training statistic the release does not keep: start uniform, as a fresh codebook does
    weights["codebook.usage"] = torch.full((config.num_actions,), 1.0 / config.num_actions, dtype=dtype)
    # built without memory or random init (2.7B parameters), then handed the release's tensors; the model is
    # only saved, so its non-persistent rotary tables may stay unallocated
    with torch.device("meta"):
        model = BWAreaModel(config)
    model.load_state_dict(weights, strict=True, assign=True)
    info = {"stage": "converted", "source": str(source.resolve()), "variant": "released"}

    def write(directory: Path) -> None:
        model.save_pretrained(directory, tokenizer=tokenizer)
        write_training_info(directory, info)

    replace_directory(out, write)
    return out


def read_release_config(source: Path) -> dict[str, Any]:
    """The release's config.json, refusing Llama features our trunks do not implement."""
    path = source / CONFIG_FILE
    if not source.is_dir():
        raise CheckpointError(f"release directory {source} does not exist; download the BWArea-2.7B release there first.")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {source} is not a Hugging Face model directory like the BWArea release.")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); download it again.") from None
    required = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
    absent = [field for field in required if not isinstance(config.get(field), int) or config[field] <= 0]
    if absent:
        raise CheckpointError(f"{path} lacks the positive integer field {absent[0]!r}; the BWArea release config is a Llama config.")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    unsupported = {
        "hidden_act": (config.get("hidden_act", "silu") != "silu", "SwiGLU with silu"),
        "rope_scaling": (config.get("rope_scaling") is not None, "plain RoPE without scaling"),
        "attention_bias": (bool(config.get("attention_bias")), "attention without biases"),
        "mlp_bias": (bool(config.get("mlp_bias")), "MLPs without biases"),
        "tie_word_embeddings": (bool(config.get("tie_word_embeddings")), "an LM head separate from the embedding"),
        "head_dim": (config.get("head_dim") not in (None, head_dim), "head_dim = hidden_size / num_attention_heads"),
    }
    for field, (differs, ours) in unsupported.items():
        if differs:
            raise CheckpointError(f"{path}: field {field!r} is {config[field]!r}, but bwarea's trunks implement only {ours}; "
                                  "this is not the BWArea release layout.")
    return config


def load_release_tokenizer(source: Path) -> Any:
    """The release's Llama-2 tokenizer with the `[PAD]` pad token its loader adds (kept if already there)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as error:
        raise CheckpointError(f"the tokenizer in {source} cannot be loaded ({error}); the release ships the Llama-2 "
                              "tokenizer files (tokenizer.model / tokenizer.json, tokenizer_config.json).") from None
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def read_release_weights(source: Path) -> dict[str, torch.Tensor]:
    """All tensors of the release: safetensors, or `.bin` pickles read with weights_only=True."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(source):
        for name, tensor in _read_weight_file(path).items():
            if name in state:
                raise CheckpointError(f"tensor {name!r} appears in two weight files of {source} (again in {path.name}); "
                                      "remove the stray file.")
            state[name] = tensor
    return state


def _weight_files(source: Path) -> list[Path]:
    for index_name, pattern in WEIGHT_LAYOUTS:
        index = source / index_name
        if index.is_file():
            try:
                files = sorted({source / name for name in json.loads(index.read_text())["weight_map"].values()})
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
                raise CheckpointError(f"{index} is not a shard index with a 'weight_map' ({error!r}); download it again.") from None
            absent = [path.name for path in files if not path.is_file()]
            if absent:
                raise CheckpointError(f"{index} lists shard {absent[0]!r} ({len(absent)} absent), which is not in {source}; "
                                      "download every shard.")
            return files
        files = sorted(source.glob(pattern))
        if files:
            return files
    raise CheckpointError(f"{source} holds no weights: expected model.safetensors or pytorch_model.bin, or their shards "
                          "with model.safetensors.index.json / pytorch_model.bin.index.json.")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path} cannot be read as a weight file ({error}); download it again.") from None
    if not isinstance(tensors, dict) or not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        raise CheckpointError(f"{path} does not hold a dictionary of tensors (a state dict); it is not a model weight file.")
    return tensors


def _prefix(state: dict[str, torch.Tensor]) -> str:
    """'model.' when the tensors carry the prefix Hugging Face's save_pretrained gives them (the release does)."""
    return "model." if any(name.startswith("model.") for name in state) else ""


def _trunk_depth(state: dict[str, torch.Tensor], trunk: str) -> int:
    layers = re.compile(rf"^(?:model\.)?{re.escape(trunk)}\.h\.(\d+)\.")
    indices = [int(match.group(1)) for name in state if (match := layers.match(name))]
    return max(indices, default=-1) + 1


def release_model_config(release: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: Any, source: Path) -> BWAreaConfig:
    """Our BWAreaConfig for the checkpoint as stored: shapes and vocabulary from config.json, K and D from the
    codebook, depths (L, L // 2, L) checked against the tensors, special ids from the tokenizer."""
    path = source / CONFIG_FILE
    layers = release["num_hidden_layers"]
    depths = {"world": layers, "inverse": layers // 2, "policy": layers}  # as the release's model builds them
    for network, depth in depths.items():
        found = _trunk_depth(state, TRUNKS[network])
        if found != depth:
            raise CheckpointError(
                f"{path}: num_hidden_layers={layers} gives the {network} trunk {depth} layers, but the weights hold "
                f"{found} ({TRUNKS[network]}.h.0..{found - 1}); config.json and the weights come from different models.")
    codebook_name = _prefix(state) + CODEBOOK
    codebook = state.get(codebook_name)
    if codebook is None or codebook.dim() != 2:
        shape = "is missing" if codebook is None else f"has shape {tuple(codebook.shape)}"
        raise CheckpointError(f"release tensor {codebook_name!r} (the K x D action codebook) {shape}; "
                              "this is not the BWArea release layout.")
    num_actions, code_dim = codebook.shape
    for field, value in (("num_code", num_actions), ("num_dim", code_dim)):
        if field in release and release[field] != value:
            raise CheckpointError(f"{path}: field {field!r} is {release[field]} but {codebook_name!r} has shape "
                                  f"{tuple(codebook.shape)}; config.json and the weights come from different models.")
    try:
        return BWAreaConfig(
            vocab_size=release["vocab_size"],
            hidden_size=release["hidden_size"],
            num_heads=release["num_attention_heads"],
            num_kv_heads=release.get("num_key_value_heads") or release["num_attention_heads"],
            intermediate_size=release["intermediate_size"],
            max_position_embeddings=release.get("max_position_embeddings", 2048),
            rope_theta=float(release.get("rope_theta", 10000.0)),
            rms_norm_eps=float(release.get("rms_norm_eps", 1e-6)),  # Hugging Face's LlamaConfig defaults
            initializer_range=float(release.get("initializer_range", 0.02)),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            world_layers=depths["world"], inverse_layers=depths["inverse"], policy_layers=depths["policy"],
            num_actions=num_actions, code_dim=code_dim,
        )
    except ValueError as error:
        raise CheckpointError(f"{path}: invalid model shape ({error}).") from None


def release_sources(config: BWAreaConfig, prefix: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Our tensor name -> the release tensors (name, expected shape) concatenated along rows to make it.

    Shapes use config.vocab_size as the checkpoint's own vocabulary (before any resizing)."""
    hidden, vocab = config.hidden_size, config.vocab_size
    query, key_value = config.num_heads * (hidden // config.num_heads), config.num_kv_heads * (hidden // config.num_heads)
    inner = config.intermediate_size
    block_shapes = {
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (query, hidden), "self_attn.k_proj.weight": (key_value, hidden),
        "self_attn.v_proj.weight": (key_value, hidden), "self_attn.o_proj.weight": (hidden, query),
        "mlp.gate_proj.weight": (inner, hidden), "mlp.up_proj.weight": (inner, hidden), "mlp.down_proj.weight": (hidden, inner),
    }
    head_shapes = {
        "lm_head.weight": (vocab, hidden), "dynamics_layer.weight": (hidden, 2 * hidden), "dynamics_norm.weight": (hidden,),
        "press_layer.weight": (config.code_dim, hidden), "action_code_book.embed.weight": (config.num_actions, config.code_dim),
        "unpress_layer.weight": (hidden, config.code_dim), "transformer_policy_layer.weight": (config.num_actions, hidden),
    }
    depths = {"world": config.world_layers, "inverse": config.inverse_layers, "policy": config.policy_layers}
    sources: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for network, trunk in TRUNKS.items():
        base = f"{prefix}{trunk}"
        sources[f"{network}.trunk.embed.weight"] = [(f"{base}.wte.weight", (vocab, hidden))]
        sources[f"{network}.trunk.norm.weight"] = [(f"{base}.ln_f.weight", (hidden,))]
        for layer in range(depths[network]):
            for ours, theirs in RELEASE_BLOCK_SOURCES.items():
                sources[f"{network}.trunk.blocks.{layer}.{ours}"] = [
                    (f"{base}.h.{layer}.{name}", block_shapes[name]) for name in theirs]
    for ours, theirs in HEAD_SOURCES.items():
        name = theirs if theirs.startswith("lm_head") else prefix + theirs
        sources[ours] = [(name, head_shapes[theirs])]
    return sources


def map_release_weights(state: dict[str, torch.Tensor], config: BWAreaConfig, source: Path) -> dict[str, torch.Tensor]:
    """Rename (and concatenate) the release tensors into ours; one CheckpointError lists every misfit."""
    prefix = _prefix(state)
    biases = sorted(name for name in state if name.endswith(".bias"))
    if biases:
        raise CheckpointError(f"release tensor {biases[0]!r} ({len(biases)} biases) is a bias, but bwarea's linear layers "
                              f"have none and the BWArea release has none; {source} is not the release layout.")
    present = {name: tensor for name, tensor in state.items()
               if name != prefix + SCRATCH_EMBEDDING and not ROTARY_BUFFER.search(name)}
    sources = release_sources(config, prefix)
    expected = {name: shape for parts in sources.values() for name, shape in parts}
    missing = sorted(set(expected) - set(present))
    unknown = sorted(set(present) - set(expected))
    misshaped = sorted(name for name in set(expected) & set(present) if tuple(present[name].shape) != expected[name])
    problems = []
    if missing:
        problems.append(f"{_listing(missing)} {'is' if len(missing) == 1 else 'are'} missing ({len(missing)} missing)")
    if unknown:
        problems.append(f"{_listing(unknown)} {'is' if len(unknown) == 1 else 'are'} unknown ({len(unknown)} unknown)")
    if misshaped:
        shapes = ", ".join(f"{name!r} has {tuple(present[name].shape)} but needs {expected[name]}" for name in misshaped[:3])
        problems.append(f"{shapes} ({len(misshaped)} mis-shaped)")
    if problems:
        raise CheckpointError(f"release tensor {'; '.join(problems)}: the weights in {source} do not fit the BWArea "
                              f"release layout that its {CONFIG_FILE} describes.")
    return {ours: torch.cat([present[name] for name, _ in parts]) if len(parts) > 1 else present[parts[0][0]]
            for ours, parts in sources.items()}


def _listing(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


VOCAB_TENSORS = ("world.trunk.embed.weight", "inverse.trunk.embed.weight", "policy.trunk.embed.weight", "world.lm_head.weight")


def release_vocab_size(checkpoint_rows: int, num_tokens: int) -> int:
    """Rows the converted model needs: the checkpoint's, or, when the tokenizer (with [PAD]) has more tokens
    than that, the tokenizer's length rounded up to a multiple of 8 as the release's loader resizes it
    (32001 tokens, 32000 rows -> 32008)."""
    return 8 * math.ceil(num_tokens / 8) if num_tokens > checkpoint_rows else checkpoint_rows


def resize_vocabulary(weights: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Give the three embeddings and the LM head `vocab_size` rows; added rows are the mean of the existing ones.

    (The release's own loader fills them randomly; the mean is a deterministic stand-in that keeps the
    added tokens, such as [PAD], unremarkable to every network.)"""
    resized = dict(weights)
    for name in VOCAB_TENSORS:
        table = weights[name]
        extra = vocab_size - table.shape[0]
        if extra > 0:
            mean = table.float().mean(0, keepdim=True).to(table.dtype)
            resized[name] = torch.cat([table, mean.expand(extra, -1)])
    return resized


def _common_dtype(weights: dict[str, torch.Tensor]) -> torch.dtype:
    """The release's floating dtype (kept on disk), or float32 if its tensors disagree."""
    dtypes = {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


