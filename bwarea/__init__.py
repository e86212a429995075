"""BWArea: a language world model driven by latent cognitive actions.

The package holds the model only (configs, transformer blocks, world model, inverse dynamics,
codebook, cognitive policy, autoregressive baseline, generation, tokenizer, checkpoints).
It depends on torch, safetensors and tokenizers/transformers and imports nothing else of ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bwarea.autoregressive import ARLanguageModel
from bwarea.checkpoint import CheckpointError, read_config, read_config_dict
from bwarea.cola import CoLAConfig, CoLAModel
from bwarea.config import ARConfig, BWAreaConfig
from bwarea.generation import GenerationOutput, generate
from bwarea.model import BWAreaModel
from bwarea.scalar_model import ScalarModel, ScalarModelConfig
from bwarea.tokenizer import load_tokenizer, train_tokenizer

MODEL_CLASSES = {cls.config_class().model_type: cls for cls in (BWAreaModel, CoLAModel, ARLanguageModel, ScalarModel)}


def has_latent_actions(model: torch.nn.Module) -> bool:
    """Whether `model` chooses a latent action per token (BWArea, CoLA) rather than the token itself (AR baseline)."""
    return hasattr(model, "label_actions")


def _model_class(directory: str | os.PathLike) -> type:
    model_type = read_config_dict(Path(directory)).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: field 'model_type' is {model_type!r}; "
                              f"bwarea loads {sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[model_type]


def load_pretrained(directory: str | os.PathLike,
                    map_location: str = "cpu") -> BWAreaModel | CoLAModel | ARLanguageModel | ScalarModel:
    """Load whichever model (BWArea, CoLA, AR baseline or scalar reward/value model) a save_pretrained directory holds."""
    return _model_class(directory).from_pretrained(directory, map_location=map_location)


def load_shapes(directory: str | os.PathLike) -> BWAreaModel | CoLAModel | ARLanguageModel | ScalarModel:
    """The model a save_pretrained directory holds, built on the meta device: shapes (parameter counts, FLOPs)
    without reading or allocating any weight."""
    model_class = _model_class(directory)
    config = read_config(Path(directory), model_class.config_class)
    with torch.device("meta"):
        return model_class(config)


__all__ = [
    "ARConfig", "ARLanguageModel", "BWAreaConfig", "BWAreaModel", "CheckpointError", "CoLAConfig", "CoLAModel",
    "GenerationOutput", "generate", "has_latent_actions", "load_pretrained", "load_shapes", "load_tokenizer", "ScalarModel", "ScalarModelConfig",
    "train_tokenizer",
]
