"""Where a model runs and in which dtype it decodes.

    device = resolve_device("auto")     # cuda if torch sees a GPU, else cpu; "cpu", "cuda:1", ... as given
    dtype = inference_dtype(device)     # torch.bfloat16 on a GPU that computes it natively, else None (fp32)
"""

from __future__ import annotations

import torch

from common.errors import InvalidInput

AUTO = "auto"


def resolve_device(requested: str | torch.device = AUTO) -> torch.device:
    """"auto": the GPU if torch sees one, else the CPU; anything else as torch.device names it."""
    if str(requested) == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {str(requested)!r} asked for, but torch sees no CUDA device; use cpu or auto.")
    return device


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of generation on `device`: bf16 on a GPU that computes it natively, else None (fp32).
    CPUs decode in fp32 even with AMX: small decoding steps are bound by overhead, which autocast adds to."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
