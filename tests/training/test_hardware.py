"""Precision `auto`, threads and device choice for each kind of hardware (the probe is injected)."""

import pytest
import torch

from training import hardware
from bwarea.device import resolve_device
from training.hardware import Hardware, configure_threads, resolve_precision


def machine(flags=(), gpu=None, gpu_bf16=False, cores=2) -> Hardware:
    return Hardware(cpu_name="Test CPU", cpu_flags=frozenset(flags), cuda_device=gpu, cuda_bf16=gpu_bf16, cores=cores)


AVX2 = machine({"avx", "avx2", "fma"})
AMX = machine({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = machine({"avx2", "avx512f", "avx512_bf16"})
AVX512_ONLY = machine({"avx2", "avx512f"})


@pytest.mark.parametrize("hw, expected", [(AVX2, "32-true"), (AVX512_ONLY, "32-true"), (AMX, "bf16-mixed"),
                                          (AVX512_BF16, "bf16-mixed")])
def test_auto_on_a_cpu_uses_bf16_only_where_it_is_native(hw, expected):
    for accelerator in ("auto", "cpu"):
        choice = resolve_precision("auto", accelerator, hw)
        assert choice.value == expected
        assert "Test CPU" in choice.reason


def test_auto_on_a_gpu_follows_the_gpu_not_the_cpu():
    ampere = machine(gpu="NVIDIA A100", gpu_bf16=True)
    volta = machine({"amx_bf16"}, gpu="Tesla V100", gpu_bf16=False)
    assert resolve_precision("auto", "auto", ampere).value == "bf16-mixed"
    assert resolve_precision("auto", "gpu", ampere).value == "bf16-mixed"
    assert resolve_precision("auto", "auto", volta).value == "32-true"      # no fp16 by surprise, no bf16 emulation
    assert resolve_precision("auto", "cpu", volta).value == "bf16-mixed"    # the AMX CPU, asked for explicitly
    assert resolve_precision("auto", "cuda", AVX2).value == "32-true"       # asked for a GPU that is not there


def test_explicit_precision_always_wins():
    assert resolve_precision("bf16-mixed", "cpu", AVX2).value == "bf16-mixed"
    assert resolve_precision("32-true", "auto", AMX).reason == "set explicitly"
    assert resolve_precision(None, "cpu", AMX).value == "bf16-mixed"


def test_device_auto_picks_the_gpu_when_there_is_one(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_threads_are_the_process_share_of_the_cores():
    before = torch.get_num_threads()
    try:
        assert configure_threads(None, 1, machine(cores=2)) == 2 and torch.get_num_threads() == 2
        assert configure_threads(None, 2, machine(cores=2)) == 1 and torch.get_num_threads() == 1
        assert configure_threads(None, 4, machine(cores=2)) == 1
        assert configure_threads(3, 1, machine(cores=2)) == 3
        with pytest.raises(ValueError, match="at least 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_the_probe_reads_this_machine():
    found = hardware.probe()
    assert found.cores >= 1 and found.cpu_name
    assert found.cpu_bf16 == bool({"amx_bf16", "avx512_bf16"} & found.cpu_flags)
