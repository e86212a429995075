"""LoRA adapters (through `peft`) on our transformer trunks.

A LoRA adapter replaces a frozen linear layer y = W x by y = W x + (alpha / r) B A dropout(x), with
A (r, in) random and B (out, r) zero at the start, so an adapted module computes exactly what it did
before until B learns. Only A and B train: a 1B trunk fine-tunes with a few million parameters.

    adapters = add_lora(model.policy.trunk, LoraSettings(rank=16))   # the action head stays trainable
    ...train `adapters` (+ the head)...
    merge_lora(model.policy.trunk)                                   # W <- W + (alpha / r) B A
    model.save_pretrained(directory)                                 # the usual tensor names again
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer


@dataclass
class LoraSettings:
    """Which linear layers get adapters, and their size.

    Args:
        rank: r, the inner dimension of each adapter (B A has rank r).
        alpha: Scale numerator: the adapter's output is multiplied by alpha / rank.
        dropout: Dropout probability on the adapter's input (training mode only).
        targets: Names of the linear layers to adapt, matched against the last part of each module name;
            by default our blocks' attn.qkv, attn.out, mlp.gate_up and mlp.down.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("qkv", "out", "gate_up", "down")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise ValueError("LoRA targets is empty; name at least one linear layer, e.g. ('qkv', 'out').")


def add_lora(module: nn.Module, settings: LoraSettings) -> list[nn.Parameter]:
    """Wrap `module`'s target linear layers with LoRA adapters (in place) and return the adapters' parameters.

    Every other parameter of `module` is frozen (requires_grad False); parameters outside it (e.g. a
    head beside an adapted trunk) are untouched.
    """
    if has_lora(module):
        raise ValueError(f"{type(module).__name__} already has LoRA adapters; merge_lora it before adding new ones.")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), bias="none")
    try:
        inject_adapter_in_model(config, module)
    except ValueError as error:
        raise ValueError(f"cannot add LoRA adapters to {type(module).__name__} with targets {settings.targets} "
                         f"({error}); targets must name nn.Linear layers such as 'qkv', 'out', 'gate_up', 'down'.") from None
    return [parameter for name, parameter in module.named_parameters() if "lora_" in name]


def merge_lora(module: nn.Module) -> None:
    """Fold every adapter of `module` into its base weight and drop the wrappers.

    Afterwards the module computes what it computed with the adapters, its state_dict has exactly the
    names it had before `add_lora`, and the merged weights keep requires_grad False (call
    requires_grad_() to train them in full).
    """
    for name, layer in [(name, sub) for name, sub in module.named_modules() if isinstance(sub, LoraLayer)]:
        layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child_name, layer.get_base_layer())
    for sub in module.modules():
        if "peft_config" in vars(sub):  # peft's bookkeeping of the adapters just removed
            del sub.peft_config


def has_lora(module: nn.Module) -> bool:
    """Whether `module` holds any LoRA adapter."""
    return any(isinstance(sub, LoraLayer) for sub in module.modules())
