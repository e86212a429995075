"""What this machine computes fast: the precision `auto` stands for and the torch threads (where a model runs:
bwarea/device.py).

    choice = resolve_precision("auto", accelerator="auto")   # Precision("32-true", "CPU ... has no native bf16 ...")
    threads = configure_threads()                            # all cores this process may use

bf16 autocast only pays where the hardware multiplies bf16 natively: CUDA GPUs that support it (compute
capability 8.0 and later) and CPUs with AMX or AVX512-BF16. On any other CPU (AVX2-only AMD EPYC, most
laptops) autocast emulates bf16 and runs ~15x slower than fp32, so `auto` picks 32-true there; fp16-mixed
is never chosen for a CPU. An explicit precision is always kept.

Every probe of the machine goes through `Hardware` (built by `probe()`), so tests can pass a made-up one.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import InvalidInput

AUTO = "auto"
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class Hardware:
    """What the precision and device choices depend on.

    cpu_name: the CPU model as the OS reports it. cpu_flags: its feature flags (Linux /proc/cpuinfo names).
    cuda_device: name of CUDA device 0, or None without a usable GPU. cuda_bf16: that device computes bf16 natively.
    cores: CPU cores this process may use (affinity mask and cgroup quota)."""

    cpu_name: str
    cpu_flags: frozenset[str]
    cuda_device: str | None
    cuda_bf16: bool
    cores: int

    @property
    def cpu_bf16(self) -> bool:
        return any(flag in self.cpu_flags for flag in NATIVE_BF16_CPU_FLAGS)


def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    if not flags:  # not Linux: ask torch's own CPU probe
        cpu = getattr(torch, "cpu", None)
        flags = frozenset(flag for flag, probe in (("amx_bf16", "_is_amx_tile_supported"),
                                                   ("avx512_bf16", "_is_avx512_bf16_supported"))
                          if callable(getattr(cpu, probe, None)) and getattr(cpu, probe)())
    return name, flags


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@functools.cache
def probe() -> Hardware:
    """This machine (computed once per process)."""
    name, flags = _cpuinfo()
    cuda = torch.cuda.is_available()
    return Hardware(cpu_name=name, cpu_flags=flags, cuda_device=torch.cuda.get_device_name(0) if cuda else None,
                    cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()), cores=usable_cores())


@dataclass(frozen=True)
class Precision:
    """A Lightning precision value and why it was chosen."""

    value: str
    reason: str


def uses_gpu(accelerator: str, hardware: Hardware) -> bool:
    """Whether Lightning's `accelerator` setting runs on a CUDA GPU on this hardware."""
    return accelerator in GPU_ACCELERATORS or (accelerator == AUTO and hardware.cuda_device is not None)


def resolve_precision(requested: str | int | None, accelerator: str = AUTO, hardware: Hardware | None = None) -> Precision:
    """`requested` itself unless it is "auto" (or None): then bf16-mixed where bf16 is native, else 32-true."""
    if requested not in (AUTO, None):
        return Precision(str(requested), "set explicitly")
    hardware = hardware or probe()
    if uses_gpu(accelerator, hardware):
        if hardware.cuda_device is None:
            return Precision("32-true", f"accelerator {accelerator!r} but no CUDA device is visible")
        if hardware.cuda_bf16:
            return Precision("bf16-mixed", f"GPU {hardware.cuda_device} computes bf16 natively")
        return Precision("32-true", f"GPU {hardware.cuda_device} has no native bf16 (set 16-mixed explicitly "
                                    "for fp16 with loss scaling)")
    if accelerator not in (AUTO, "cpu"):
        return Precision("32-true", f"accelerator {accelerator!r}: bf16 speed unknown, fp32 is the safe choice")
    if hardware.cpu_bf16:
        found = ", ".join(flag for flag in NATIVE_BF16_CPU_FLAGS if flag in hardware.cpu_flags)
        return Precision("bf16-mixed", f"CPU {hardware.cpu_name} computes bf16 natively ({found})")
    return Precision("32-true", f"CPU {hardware.cpu_name} has no native bf16 (no AMX / AVX512-BF16), where bf16 "
                                "autocast is emulated and ~15x slower than fp32")


def configure_threads(threads: int | None = None, processes_per_machine: int = 1, hardware: Hardware | None = None) -> int:
    """Set torch's intra-op threads: `threads`, or this process's share of the usable cores. Returns the count."""
    if threads is not None and threads < 1:
        raise InvalidInput(f"threads must be at least 1, got {threads}.")
    count = threads or max(1, (hardware or probe()).cores // max(1, processes_per_machine))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def runtime_line(device: str | torch.device, precision: Precision, threads: int | None = None) -> str:
    """One line saying what runs where, printed when a command starts."""
    threads = torch.get_num_threads() if threads is None else threads
    return f"running on {device} with precision {precision.value} ({precision.reason}); torch threads: {threads}"
