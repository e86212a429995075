"""Is bf16 autocast worth it on this CPU? fp32 vs bf16-mixed training steps, measured side by side, and what
`precision: auto` picks here (training/hardware.py).

One step = forward + backward + AdamW of the tiny BWArea stage 1 (world model + inverse dynamics), batch 16 x 128
tokens, and of a plain 4-layer MLP (1024 wide, batch 256) as a model-free check. Rounds alternate between the two
precisions; the median is reported.

    python benchmarks/bench_precision.py --threads 2
    # an AVX2-only CPU, emulated on an AMX machine (kernels and oneDNN/MKL limited to AVX2):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_precision.py
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from timing import timed_rounds
from bwarea import BWAreaConfig, BWAreaModel
from training.hardware import probe, resolve_precision


def bwarea_step(batch: int, length: int):
    model = BWAreaModel(BWAreaConfig.preset("tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model.stage1(tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def mlp_step(batch: int = 256, width: int = 1024):
    model = torch.nn.Sequential(*[layer for _ in range(4) for layer in (torch.nn.Linear(width, width), torch.nn.GELU())])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = torch.randn(batch, width, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(inputs).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hardware = probe()
    emulation = {key: os.environ[key] for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
                 if key in os.environ}
    choice = resolve_precision("auto", "cpu", hardware)
    print(f"CPU {hardware.cpu_name}, kernels {torch.backends.cpu.get_cpu_capability()}"
          f"{' (limited by ' + str(emulation) + ')' if emulation else ''}, {args.threads} threads; "
          f"precision auto -> {choice.value} ({choice.reason})")
    results = {}
    for name, make in (("tiny BWArea stage 1 (16 x 128 tokens)", lambda: bwarea_step(16, 128)), ("MLP 4 x 1024", mlp_step)):
        step = make()

        def run(bf16: bool) -> int:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for _ in range(args.steps):
                    step()
            return args.steps
        steps_per_second = timed_rounds({"fp32": lambda: run(False), "bf16-mixed": lambda: run(True)}, args.rounds)
        per_step = {key: 1 / rate for key, rate in steps_per_second.items()}
        results[name] = {**{f"{key}_s_per_step": round(value, 4) for key, value in per_step.items()},
                         "bf16_over_fp32_time": round(per_step["bf16-mixed"] / per_step["fp32"], 2)}
        print(f"{name:>38}: fp32 {per_step['fp32']:.3f} s/step | bf16-mixed {per_step['bf16-mixed']:.3f} s/step | "
              f"bf16 takes {results[name]['bf16_over_fp32_time']:.2f}x the fp32 time")
    print(json.dumps({"cpu": hardware.cpu_name, "kernels": torch.backends.cpu.get_cpu_capability(), "emulation": emulation,
                      "auto": choice.value, "results": results}))


if __name__ == "__main__":
    main()
