"""Hugging Face style checkpoints: config.json + model.safetensors (+ tokenizer files).

Weights are read with safetensors only (nothing is ever unpickled). Every problem with a checkpoint
directory (missing file, unreadable file, unknown or missing config field, tensors that do not fit
the config) raises one `CheckpointError` naming the file and the field. Files are written to a temp
name and renamed, so an interrupted save never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.files import atomic_write, atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_INFO_FILE = "training_info.json"  # which stage produced an export, and how

# substring of a tensor name -> config fields that decide its shape (first match wins)
_SHAPE_FIELDS: list[tuple[str, tuple[str, ...]]] = [
    ("merges", ("merge_layers", "hidden_size", "merge_intermediate_size", "intermediate_size")),
    ("embed", ("vocab_size", "hidden_size")),
    ("lm_head", ("vocab_size", "hidden_size")),
    ("action_head", ("num_actions", "hidden_size")),
    ("codebook.up", ("code_dim", "hidden_size")),
    ("codebook.weight", ("num_actions", "hidden_size")),
    ("codebook", ("num_actions", "code_dim")),
    ("usage", ("num_actions",)),
    ("ema_", ("num_actions", "code_dim")),
    ("to_code", ("code_dim", "hidden_size")),
    ("qkv.bias", ("attention_bias", "hidden_size", "num_heads", "num_kv_heads")),
    ("attn", ("hidden_size", "num_heads", "num_kv_heads")),
    ("mlp", ("hidden_size", "intermediate_size")),
    ("norm", ("hidden_size",)),
    ("inject", ("hidden_size",)),
]
# prefix of a tensor name -> config field giving that network's depth
_DEPTH_FIELDS = {"lm.": "num_layers", "world.": "world_layers", "inverse.": "inverse_layers", "policy.": "policy_layers", "trunk.": "num_layers"}


class CheckpointError(UserError, ValueError):
    """A checkpoint directory that cannot be loaded into the requested model."""


def _aliased_names(module: nn.Module) -> set[str]:
    """Names in state_dict that share storage with an earlier name (tied weights), saved only once."""
    seen: set[int] = set()
    aliases = set()
    for name, tensor in module.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


def _fields_for(name: str) -> str:
    fields = next((fields for key, fields in _SHAPE_FIELDS if key in name), ())
    if ".blocks." in name:
        depth = next((field for prefix, field in _DEPTH_FIELDS.items() if name.startswith(prefix)), None)
        fields = (depth, *fields) if depth else fields
    return ", ".join(fields) or "the model architecture"


def write_training_info(directory: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write training_info.json; `info` must name the "stage" that produced the export (read_training_info needs it)."""
    if "stage" not in info:
        raise ValueError(f"training info for {directory} must name the 'stage' that produced the export, got keys {sorted(info)}.")
    atomic_write_text(Path(directory) / TRAINING_INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_training_info(directory: str | os.PathLike, purpose: str = "this run") -> dict[str, Any]:
    """The training_info.json of an export directory; CheckpointError naming `purpose` if it is not one."""
    directory = Path(directory).expanduser()
    path = directory / TRAINING_INFO_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} does not exist; {purpose} needs the export/ directory of a finished bwarea training run.")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {TRAINING_INFO_FILE}, so it is not the export/ directory of a bwarea "
                              f"training run; {purpose} needs one (runs/<name>/export).")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); re-export the run.") from None
    if not isinstance(info, dict) or "stage" not in info:
        raise CheckpointError(f"{path} does not name the stage that produced the export; re-export the run.")
    return info



class PretrainedModel(nn.Module):
    """Adds save_pretrained / from_pretrained to a model built from one dataclass config."""

    config_class: type

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> None:
        """Write config.json, model.safetensors and, if given, the tokenizer's files into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        aliases = _aliased_names(self)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items() if name not in aliases}
        atomic_write(directory / WEIGHTS_FILE, lambda temp: save_file(state, temp, metadata={"format": "pt"}))
        if tokenizer is not None:
            with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer.") as staging:
                tokenizer.save_pretrained(staging)
                for file in Path(staging).iterdir():
                    os.replace(file, directory / file.name)
        atomic_write_text(directory / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PretrainedModel":
        """Build the model from `directory`/config.json and load `directory`/model.safetensors into it."""
        directory = Path(directory)
        config = read_config(directory, cls.config_class)
        model = cls(config)
        state = read_weights(directory)
        load_weights(model, state, directory)
        return model.to(map_location)


ConfigT = TypeVar("ConfigT")


def read_config_dict(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist; pass a directory written by save_pretrained.")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; a checkpoint directory needs {CONFIG_FILE} and {WEIGHTS_FILE} (written by save_pretrained).")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); restore it from the original checkpoint.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of config fields, found {type(data).__name__}.")
    return data


def read_config(directory: Path, config_class: type[ConfigT]) -> ConfigT:
    path = Path(directory) / CONFIG_FILE
    data = read_config_dict(directory)
    expected_type = config_class().model_type
    if data.get("model_type") != expected_type:
        raise CheckpointError(
            f"{path}: field 'model_type' is {data.get('model_type')!r} but {config_class.__name__} needs {expected_type!r}; "
            "load it with bwarea.load_pretrained, which picks the right class."
        )
    fields = {key: value for key, value in data.items() if key != "model_type"}
    known = config_class.field_names()
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown field {unknown[0]!r} for {config_class.__name__}; valid fields are {sorted(known)}.")
    try:
        return config_class(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid config ({error}).") from None


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint directory holds a config but no weights.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupted or not a safetensors file ({error}).") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Copy `state` into `model`, raising CheckpointError on any missing, extra or misshapen tensor."""
    weights = Path(directory) / WEIGHTS_FILE
    config = Path(directory) / CONFIG_FILE
    expected = {name: tensor for name, tensor in model.state_dict().items() if name not in _aliased_names(model)}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{weights} lacks tensor {missing[0]!r} ({len(missing)} missing) that {config} implies through "
            f"field(s) {_fields_for(missing[0])}; the config and weights come from different models."
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{weights} has tensor {unexpected[0]!r} ({len(unexpected)} unexpected) that {config} does not account for "
            f"(check field(s) {_fields_for(unexpected[0])})."
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{weights}: tensor {name!r} has shape {tuple(state[name].shape)} but {config} field(s) "
                f"{_fields_for(name)} imply {tuple(tensor.shape)}."
            )
    model.load_state_dict(state, strict=False)
