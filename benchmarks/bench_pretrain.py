"""Pretraining throughput through the real Lightning loop: BWArea stage 1 vs the equal-size AR baseline.

Each contender is a full `bwarea pretrain` run in its own process (configs/pretrain/<preset>.yaml and
<preset>-ar.yaml, same corpus, blocks and batch; validation off; tokenizer and token cache built beforehand),
alternating world, AR, world, AR, ...
Reported per contender: median training tokens/s over the logged windows after warm-up (the
ThroughputMonitor's perf/tokens_per_sec: data loading and optimizer included), estimated FLOP/s, and
the peak RSS of the training process. Target: stage 1 >= 0.6x the AR baseline's tokens/s.

    python benchmarks/bench_pretrain.py [--preset tiny] [--steps 100] [--rounds 2] [--threads 2] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from training.data import PretrainData
from training.runs import read_metrics

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 40  # logged windows ending before this step are discarded
WINDOW_STEPS = 20  # ThroughputMonitor averages over this many steps


def small_corpus(directory: Path) -> Path:
    from envs.corpus import DirtyConfig, OutputConfig, TextWorldCorpusConfig, build_textworld_corpus

    build_textworld_corpus(TextWorldCorpusConfig(games=4, exploratory_per_game=8, cache_dir=str(directory / "games")),
                           OutputConfig(out=str(directory / "corpus"), progress=False), DirtyConfig())
    return directory / "corpus"


def measure(stage: str, preset: str, name: str, corpus: Path, work: Path, steps: int, threads: int) -> dict[str, float]:
    config = REPO / "configs" / "pretrain" / f"{preset}{'' if stage == 'world' else '-ar'}.yaml"
    command = [sys.executable, "-m", "training.cli", "pretrain", "--config", str(config), "--data.corpus", str(corpus),
               "--data.cache_dir", str(work / "cache"), "--data.progress", "false", "--run.root", str(work / "runs"),
               "--run.name", name, "--run.wandb", "false", "--run.checkpoint_every_n_steps", str(steps + 1),
               "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    rows = [row for row in read_metrics(work / "runs" / name) if "perf/tokens_per_sec" in row]
    steady = [row for row in rows if row["step"] >= WARMUP_STEPS]
    return {"tokens_per_sec": statistics.median(row["perf/tokens_per_sec"] for row in steady),
            "flops_per_sec": statistics.median(row["perf/flops_per_sec"] for row in steady),
            "peak_rss_mb": max(row["perf/peak_rss_mb"] for row in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="configs/pretrain/<preset>.yaml and <preset>-ar.yaml")
    parser.add_argument("--steps", type=int, default=100, help=f"Optimizer steps per run (> {WARMUP_STEPS + WINDOW_STEPS}).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs per contender (alternating).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads per run (OMP_NUM_THREADS).")
    parser.add_argument("--corpus", type=Path, default=None, help="Corpus directory; default: 4 TextWorld games built here.")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS + WINDOW_STEPS:
        parser.error(f"--steps must exceed {WARMUP_STEPS + WINDOW_STEPS}: the first {WARMUP_STEPS} steps are warm-up and "
                     f"the throughput is averaged over {WINDOW_STEPS} steps.")
    preset = yaml.safe_load((REPO / "configs" / "pretrain" / f"{args.preset}.yaml").read_text())
    data, precision = preset["data"], preset["trainer"].get("precision", "32-true")

    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as temp:
        work = Path(temp)
        corpus = args.corpus or small_corpus(work)
        # tokenizer and token cache built here, so that no measured run pays for them (in time or in peak RSS)
        PretrainData(str(corpus), **{key: data[key] for key in ("vocab_size", "block_size", "val_fraction")},
                     cache_dir=str(work / "cache"), progress=False).setup()
        results: dict[str, list[dict[str, float]]] = {"world": [], "ar": []}
        for round_index in range(args.rounds):
            for stage in results:
                results[stage].append(measure(stage, args.preset, f"{stage}-{round_index}", corpus, work, args.steps, args.threads))
                print(f"round {round_index} {stage}: {results[stage][-1]['tokens_per_sec']:.0f} tokens/s", flush=True)

    summary = {stage: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for stage, runs in results.items()}
    print(f"\npreset {args.preset} ({data['batch_size']} x {data['block_size']} tokens per step, precision {precision}), "
          f"{args.steps} steps per run ({WARMUP_STEPS} warm-up), {args.rounds} rounds, {args.threads} threads; medians")
    print(f"{'contender':<28} {'tokens/s':>10} {'GFLOP/s':>9} {'peak RSS MB':>12}")
    for stage, label in (("world", "BWArea stage 1 (WM + ID)"), ("ar", "AR baseline")):
        row = summary[stage]
        print(f"{label:<28} {row['tokens_per_sec']:>10.0f} {row['flops_per_sec'] / 1e9:>9.1f} {row['peak_rss_mb']:>12.0f}")
    ratio = summary["world"]["tokens_per_sec"] / summary["ar"]["tokens_per_sec"]
    rounds = ", ".join(f"{world['tokens_per_sec'] / ar['tokens_per_sec']:.2f}" for world, ar in zip(results["world"], results["ar"]))
    print(f"stage 1 / AR tokens/s: {ratio:.2f}x (target >= 0.6x); per round: {rounds}")


if __name__ == "__main__":
    main()
