"""BWArea: a language world model driven by latent cognitive actions.

The package holds the model only (configs, transformer blocks, world model, inverse dynamics,
codebook, cognitive policy, autoregressive baseline, generation, tokenizer, checkpoints).
It depends on torch, safetensors and tokenizers/transformers and imports nothing else of ours.
"""

from __future__ import annotations

import os
from pathlib import Path

from bwarea.autoregressive import ARLanguageModel
from bwarea.checkpoint import CheckpointError, read_config_dict
from bwarea.config import ARConfig, BWAreaConfig
from bwarea.generation import GenerationOutput, generate
from bwarea.model import BWAreaModel
from bwarea.scalar_model import ScalarModel, ScalarModelConfig
from bwarea.tokenizer import load_tokenizer, train_tokenizer

MODEL_CLASSES = {cls.config_class().model_type: cls for cls in (BWAreaModel, ARLanguageModel, ScalarModel)}


def load_pretrained(directory: str | os.PathLike, map_location: str = "cpu") -> BWAreaModel | ARLanguageModel | ScalarModel:
    """Load whichever model (BWArea, AR baseline or scalar reward/value model) a save_pretrained directory holds."""
    model_type = read_config_dict(Path(directory)).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: field 'model_type' is {model_type!r}; "
                              f"bwarea loads {sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[model_type].from_pretrained(directory, map_location=map_location)


__all__ = [
    "ARConfig", "ARLanguageModel", "BWAreaConfig", "BWAreaModel", "CheckpointError", "GenerationOutput",
    "generate", "load_pretrained", "load_tokenizer", "ScalarModel", "ScalarModelConfig", "train_tokenizer",
]
