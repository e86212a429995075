"""Pretraining throughput through the real Lightning loop: BWArea stage 1 vs the equal-size AR baseline.

Each contender is a full `bwarea pretrain` run in its own process (configs/pretrain/<preset>.yaml and
<preset>-ar.yaml: same corpus, blocks, batch and precision; validation off; tokenizer and token cache
built beforehand). The two processes of a round run at the same time, for the same wall-clock period
(trainer.max_time) and with the same number of threads each, so that both see the same machine: on a
shared machine whose speed changes with other people's jobs, runs one after the other are not comparable.
Reported per contender: median training tokens/s over the logged windows after warm-up (the
ThroughputMonitor's perf/tokens_per_sec: data loading and optimizer included), estimated FLOP/s, and
the peak RSS of the training process. Target: stage 1 >= 0.6x the AR baseline's tokens/s.

    python benchmarks/bench_pretrain.py [--preset tiny] [--seconds 240] [--rounds 2] [--threads 1] [--corpus DIR]
                                        [--precision 32-true] [--keep DIR]
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

from common.logs import read_metrics
from training.data import PretrainData

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 10  # steps discarded at the start of each run (allocations, first-touch of the data)
WINDOW_STEPS = 20  # ThroughputMonitor averages over this many steps
STAGES = {"world": "BWArea stage 1 (WM + ID)", "ar": "AR baseline"}


def small_corpus(directory: Path) -> Path:
    from envs.corpus import DirtyConfig, OutputConfig, TextWorldCorpusConfig, build_textworld_corpus

    build_textworld_corpus(TextWorldCorpusConfig(games=4, exploratory_per_game=8, cache_dir=str(directory / "games")),
                           OutputConfig(out=str(directory / "corpus"), progress=False), DirtyConfig())
    return directory / "corpus"


def start(stage: str, args: argparse.Namespace, name: str, corpus: Path, work: Path, precision: str) -> subprocess.Popen:
    config = REPO / "configs" / "pretrain" / f"{args.preset}{'' if stage == 'world' else '-ar'}.yaml"
    minutes, seconds = divmod(args.seconds, 60)
    command = [sys.executable, "-m", "cli.main", "pretrain", "--config", str(config), "--data.corpus", str(corpus),
               "--data.cache_dir", str(work / "cache"), "--data.progress", "false", "--run.root", str(work / "runs"),
               "--run.name", name, "--run.wandb", "false", "--run.checkpoint_every_n_steps", str(10**9),
               "--trainer.max_steps", str(10**6), "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}",
               "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.precision", precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def collect(name: str, process: subprocess.Popen, work: Path) -> dict[str, float]:
    _, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(f"{name} failed:\n{stderr[-3000:]}")
    rows = [row for row in read_metrics(work / "runs" / name) if "perf/tokens_per_sec" in row]
    steady = [row for row in rows if row["step"] >= WARMUP_STEPS + WINDOW_STEPS - 1]
    if not steady:
        raise RuntimeError(f"{name} trained only {int(rows[-1]['step']) + 1 if rows else 0} steps; raise --seconds.")
    return {"tokens_per_sec": statistics.median(row["perf/tokens_per_sec"] for row in steady),
            "flops_per_sec": statistics.median(row["perf/flops_per_sec"] for row in steady),
            "peak_rss_mb": max(row["perf/peak_rss_mb"] for row in rows), "steps": rows[-1]["step"] + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="configs/pretrain/<preset>.yaml and <preset>-ar.yaml")
    parser.add_argument("--seconds", type=int, default=240, help="Wall-clock training time of each round (both contenders).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds (each runs both contenders side by side).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of each of the two processes (OMP_NUM_THREADS).")
    parser.add_argument("--corpus", type=Path, default=None, help="Corpus directory; default: 4 TextWorld games built here.")
    parser.add_argument("--precision", default=None, help="Trainer precision of both contenders (default: the preset's).")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs (and the corpus) in this new directory.")
    args = parser.parse_args()
    if not 0 < args.seconds < 3600:
        parser.error("--seconds must be between 1 and 3599.")
    preset = yaml.safe_load((REPO / "configs" / "pretrain" / f"{args.preset}.yaml").read_text())
    data = preset["data"]
    precision = args.precision or preset["trainer"].get("precision", "32-true")

    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as temp:
        work = Path(temp)
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            work = args.keep.resolve()
        corpus = args.corpus or small_corpus(work)
        # tokenizer and token cache built here, so that no measured run pays for them (in time or in peak RSS)
        PretrainData(str(corpus), **{key: data[key] for key in ("vocab_size", "block_size", "val_fraction")},
                     cache_dir=str(work / "cache"), progress=False).setup()
        results: dict[str, list[dict[str, float]]] = {stage: [] for stage in STAGES}
        for round_index in range(args.rounds):
            processes = {stage: start(stage, args, f"{stage}-{round_index}", corpus, work, precision) for stage in STAGES}
            for stage, process in processes.items():
                results[stage].append(collect(f"{stage}-{round_index}", process, work))
            print(f"round {round_index}: " + ", ".join(f"{stage} {runs[-1]['tokens_per_sec']:.0f} tokens/s "
                                                      f"({runs[-1]['steps']:.0f} steps)" for stage, runs in results.items()),
                  flush=True)

    summary = {stage: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for stage, runs in results.items()}
    print(f"\npreset {args.preset} ({data['batch_size']} x {data['block_size']} tokens per step, precision {precision}); "
          f"{args.rounds} rounds of {args.seconds} s, both contenders at once with {args.threads} thread(s) each; "
          f"windows of {WINDOW_STEPS} steps after {WARMUP_STEPS} warm-up steps; medians")
    print(f"{'contender':<28} {'tokens/s':>10} {'GFLOP/s':>9} {'peak RSS MB':>12}")
    for stage, label in STAGES.items():
        row = summary[stage]
        print(f"{label:<28} {row['tokens_per_sec']:>10.0f} {row['flops_per_sec'] / 1e9:>9.2f} {row['peak_rss_mb']:>12.0f}")
    ratio = summary["world"]["tokens_per_sec"] / summary["ar"]["tokens_per_sec"]
    rounds = ", ".join(f"{world['tokens_per_sec'] / ar['tokens_per_sec']:.2f}" for world, ar in zip(results["world"], results["ar"]))
    print(f"stage 1 / AR tokens/s: {ratio:.2f}x (target >= 0.6x); per round: {rounds}")


if __name__ == "__main__":
    main()
