"""Optimizer state and step time: AdamW vs Adam-mini (training.adam_mini), side by side in one run.

For the BWArea presets and the AR baseline of the same size (ARConfig.matching), training (a) the whole model
and (b) only the cognitive policy (model.policy_parameters(), what reward fine-tuning trains; for the AR
baseline the policy is the whole model):

- optimizer-state bytes of AdamW and Adam-mini, and their ratio. AdamW holds two fp32 moments per weight and a
  step tensor per parameter; Adam-mini one fp32 moment per weight and one fp32 entry per block. For the tiny
  and small presets the state is allocated and measured (and checked against that count); the 1b preset is
  built on the meta device and counted from its partition, without allocating anything: exact either way;
- seconds per optimizer step (tiny and small only): median of several rounds, the two optimizers alternating on
  the same model and the same gradients (fp32 parameters).

    python benchmarks/bench_optimizer_memory.py [--presets tiny small] [--counted-presets 1b] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import subprocess
from typing import Any, Callable

import torch
import torch.nn as nn

from timing import timed_rounds
from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel
from training.adam_mini import AdamMini, adam_mini_param_groups, num_blocks, optimizer_state_bytes

WEIGHT_DECAY = 0.1


def cpu_name() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu unavailable)"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")


def models(preset: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    config = BWAreaConfig.preset(preset)
    return {f"bwarea {preset}": BWAreaModel(config), f"ar {preset}": ARLanguageModel(ARConfig.matching(config))}


def trained_parts(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    if isinstance(model, ARLanguageModel):
        return {"whole (= policy)": list(model.parameters())}
    return {"whole": list(model.parameters()), "policy": model.policy_parameters()}


def counted_bytes(groups: list[dict[str, Any]]) -> tuple[int, int]:
    """(AdamW, Adam-mini) state bytes for the groups' parameters, from shapes and layouts alone (fp32 state)."""
    pairs = [(param, layout) for group in groups for param, layout in zip(group["params"], group["block_layouts"])]
    adamw = sum(8 * param.numel() + 4 for param, _ in pairs)  # exp_avg, exp_avg_sq, a float32 step tensor
    adam_mini = sum(4 * (param.numel() + num_blocks(layout)) for param, layout in pairs)
    return adamw, adam_mini


def optimizer_step(optimizer: torch.optim.Optimizer) -> Callable[[], int]:
    def run() -> int:
        optimizer.step()
        return 1
    return run


def measure(model: nn.Module, parameters: list[nn.Parameter], rounds: int) -> dict[str, float]:
    groups = adam_mini_param_groups(model, parameters, weight_decay=WEIGHT_DECAY)
    adam_mini = AdamMini(groups, lr=1e-5)
    adamw = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    for param in parameters:
        param.grad = torch.randn(param.shape, generator=generator)
    rates = timed_rounds({"adamw": optimizer_step(adamw), "adam_mini": optimizer_step(adam_mini)}, rounds)
    measured = optimizer_state_bytes(adamw), optimizer_state_bytes(adam_mini)
    if measured != counted_bytes(groups):
        raise AssertionError(f"measured state bytes {measured} differ from the count {counted_bytes(groups)}")
    for param in parameters:
        param.grad = None
    return {"params": sum(p.numel() for p in parameters), "adamw": measured[0], "adam_mini": measured[1],
            "adamw_s": 1 / rates["adamw"], "adam_mini_s": 1 / rates["adam_mini"]}


def count(model: nn.Module, parameters: list[nn.Parameter]) -> dict[str, float]:
    adamw, adam_mini = counted_bytes(adam_mini_param_groups(model, parameters, weight_decay=WEIGHT_DECAY))
    return {"params": sum(p.numel() for p in parameters), "adamw": adamw, "adam_mini": adam_mini}


def megabytes(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB" if value < 2**30 else f"{value / 2**30:,.2f} GiB"


def print_row(name: str, part: str, row: dict[str, float]) -> None:
    timing = (f"{row['adamw_s'] * 1e3:9.1f} ms {row['adam_mini_s'] * 1e3:9.1f} ms {row['adamw_s'] / row['adam_mini_s']:6.2f}x"
              if "adamw_s" in row else f"{'(counted on meta)':>34}")
    print(f"{name:12} {part:17} {row['params'] / 1e6:9.2f}M {megabytes(row['adamw']):>12} {megabytes(row['adam_mini']):>12} "
          f"{row['adam_mini'] / row['adamw']:6.3f} {timing}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"], help="presets allocated, measured and timed")
    parser.add_argument("--counted-presets", nargs="*", default=["1b"], help="presets counted on the meta device")
    # one thread: an optimizer step is memory-bound, and on a shared box a second thread mostly waits at barriers
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {args.threads} threads; fp32 parameters; "
          f"step times: median of {args.rounds} alternating rounds")
    print(f"{'model':12} {'trained':17} {'params':>10} {'AdamW state':>12} {'Adam-mini':>12} {'ratio':>6} "
          f"{'AdamW step':>12} {'Adam-mini':>12} {'speed':>7}")
    for preset in args.presets:
        for name, model in models(preset).items():
            for part, parameters in trained_parts(model).items():
                print_row(name, part, measure(model, parameters, args.rounds))
    for preset in args.counted_presets:
        with torch.device("meta"):
            built = models(preset)
        for name, model in built.items():
            for part, parameters in trained_parts(model).items():
                print_row(name, part, count(model, parameters))


if __name__ == "__main__":
    main()
