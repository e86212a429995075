"""Adapting a pretrained language model: where a model starts, and which of its weights train.

`start_model(source, variant)` returns the model a stage starts from: a save_pretrained directory of ours
(e.g. written by `bwarea convert hf`) is loaded as it is; anything else is read as a Hugging Face causal LM
(a model directory or a .gguf file, bwarea.pretrained_lm) and turned into the requested variant:

    variant "bwarea": world model = the LM (action injection initialised to zero, so the logits are the LM's),
                      inverse dynamics = its first L/2 layers, policy = the LM trunk + a new K-way head;
    variant "cola":   the frozen LM, with small action networks on its last hidden state (bwarea.cola);
    variant "ar":     the LM itself, as the autoregressive baseline.

`prepare_tuning(model, stage, tuning, lora)` freezes the model and unfreezes (or adapts with LoRA) the part a
stage trains, and returns the parameters to optimise. What each tuning means, per model and stage:

    model   stage   full                       actions / head                    lora
    bwarea  world   world + inverse + codebook actions: injection, inverse,      adapters on the world and inverse
                                               codebook (world trunk frozen)     trunks + injection, to_code, codebook
    bwarea  policy  the whole policy           head: the K-way head only         adapters on the policy trunk + head
    ar      -       every weight               -                                 adapters on the trunk
    cola    world   inverse + codebook + merge (the LM is frozen in every mode)  -
    cola    policy  policy blocks + head       head: the K-way head only         -
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch.nn as nn

from bwarea.autoregressive import ARLanguageModel
from bwarea.checkpoint import CONFIG_FILE, CheckpointError, PretrainedModel
from bwarea.lora import LoraSettings, add_lora

Variant = Literal["bwarea", "cola", "ar"]
Stage = Literal["world", "policy"]
Tuning = Literal["full", "actions", "head", "lora"]

# model_type -> stage -> tuning -> (modules trained whole, modules given LoRA adapters), as submodule paths
TUNING_PLANS: dict[str, dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]] = {
    "bwarea": {
        "world": {"full": (("world", "inverse", "codebook"), ()),
                  "actions": (("world.inject", "inverse", "codebook"), ()),
                  "lora": (("world.inject", "inverse.to_code", "codebook"), ("world.trunk", "inverse.trunk"))},
        "policy": {"full": (("policy",), ()), "head": (("policy.action_head",), ()),
                   "lora": (("policy.action_head",), ("policy.trunk",))},
    },
    "bwarea-ar": {
        "policy": {"full": (("",), ()), "lora": ((), ("trunk",))},
    },
    "bwarea-cola": {
        "world": {"full": (("inverse", "codebook", "world"), ())},
        "policy": {"full": (("policy",), ()), "head": (("policy.action_head",), ())},
    },
}
VARIANT_TYPES = {"bwarea": "bwarea", "cola": "bwarea-cola", "ar": "bwarea-ar"}


def is_saved_model(source: str | os.PathLike) -> bool:
    """Whether `source` is a save_pretrained directory of one of this package's models."""
    from bwarea import MODEL_CLASSES

    config = Path(source).expanduser() / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in MODEL_CLASSES
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def start_model(source: str | os.PathLike, variant: Variant, *, max_position_embeddings: int | None = None,
                **options: Any) -> PretrainedModel:
    """The model a stage starts from (see the module docstring); `options` go to the variant's builder
    (e.g. num_actions, code_dim) and are refused for a saved model of ours, whose shapes are fixed."""
    from bwarea import load_pretrained
    from bwarea.pretrained_lm import load_causal_lm

    if variant not in VARIANT_TYPES:
        raise ValueError(f"variant {variant!r} is unknown; choose one of {sorted(VARIANT_TYPES)}.")
    if is_saved_model(source):
        model = load_pretrained(source)
        if model.config.model_type != VARIANT_TYPES[variant]:
            raise CheckpointError(f"{source} holds a {model.config.model_type!r} model, not the {variant!r} variant "
                                  f"({VARIANT_TYPES[variant]!r}); convert the source LM again with --variant {variant}.")
        if options:
            raise ValueError(f"{source} is an already converted model, so {sorted(options)} cannot change it; "
                             "drop those settings or start from the original language model.")
        return model
    lm, _ = load_causal_lm(source, max_position_embeddings=max_position_embeddings)
    return model_from_lm(lm, variant, **options)


def model_from_lm(lm: ARLanguageModel, variant: Variant, **options: Any) -> PretrainedModel:
    """The `variant` built from a language model already in our format (see the module docstring)."""
    from bwarea.cola import CoLAModel
    from bwarea.pretrained_lm import bwarea_from_lm

    if variant == "ar":
        if options:
            raise ValueError(f"the AR baseline is the language model itself; {sorted(options)} do not apply to it.")
        return lm
    if variant == "cola":
        return CoLAModel.from_lm(lm, **options)
    if variant != "bwarea":
        raise ValueError(f"variant {variant!r} is unknown; choose one of {sorted(VARIANT_TYPES)}.")
    return bwarea_from_lm(lm, **options)


def tunings(model: nn.Module, stage: Stage) -> list[str]:
    """The tuning modes `prepare_tuning` accepts for this model and stage."""
    return list(_plans(model, stage))


def _plans(model: nn.Module, stage: Stage) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    model_type = model.config.model_type
    by_stage = TUNING_PLANS.get(model_type, {})
    # the AR baseline has one network: what it trains in pretraining is what it trains in fine-tuning
    return by_stage.get(stage) or by_stage.get("policy", {})


def prepare_tuning(model: nn.Module, stage: Stage, tuning: str, lora: LoraSettings | None = None) -> list[nn.Parameter]:
    """Freeze `model`, then make trainable what `tuning` names for `stage`; returns the parameters to optimise."""
    plans = _plans(model, stage)
    if tuning not in plans:
        raise ValueError(f"tuning {tuning!r} is not available for a {model.config.model_type!r} model in the {stage} "
                         f"stage; choose one of {sorted(plans)}.")
    trained, adapted = plans[tuning]
    model.requires_grad_(False)
    parameters: list[nn.Parameter] = []
    for path in adapted:
        parameters += add_lora(model.get_submodule(path), lora or LoraSettings())
    for path in trained:
        module = model.get_submodule(path)
        module.requires_grad_(True)
        parameters += list(module.parameters())
    unique = {id(p): p for p in parameters}
    return list(unique.values())
