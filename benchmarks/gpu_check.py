"""One GPU check, ready to run (issue 13 §5): what the 1b preset does on one GPU, printed as one JSON object.

    python benchmarks/gpu_check.py                      # one CUDA GPU, ~8 minutes; `make gpu-check` runs this
    python benchmarks/gpu_check.py --preset tiny --accelerator cpu --steps 4 --decode_preset tiny   # plumbing, on a CPU

Parts, each a real command in its own process (so each starts with empty GPU memory), on a small TextWorld corpus
built first (stage 1 trains its tokenizer):
  stage1 / stage2   `bwarea pretrain` of the preset's stage 1 and stage 2 for --steps steps: median tokens/s and MFU
                    over the steps after warm-up (ThroughputMonitor), peak GPU memory;
  remax / ppo       `bwarea finetune` of the stage-2 export on TextWorld coin-easy, --updates updates each:
                    seconds per update (the last one: the first pays start-up costs) and peak GPU memory;
  decode            benchmarks/bench_decode.py: decoding tokens/s, ours vs transformers' Llama generate.
A part that fails records its error and the check goes on. Nothing here runs in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H200_PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM; --peak_flops for another GPU


def command(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def failure(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {"error": f"exit {result.returncode}: " + (result.stderr or result.stdout)[-1500:]}


def steady(rows: list[dict[str, float]], key: str, warmup: int) -> float | None:
    values = [row[key] for row in rows if key in row and row.get("step", 0) >= warmup]
    return round(statistics.median(values), 4) if values else None


def pretrain_part(stage_config: str, args: argparse.Namespace, work: Path, corpus: Path, name: str,
                  extra: list[str]) -> dict:
    from common.logs import read_metrics

    started = time.perf_counter()
    result = command("-m", "cli.main", "pretrain", "--config", stage_config, "--data.corpus", str(corpus),
                     "--data.vocab_size", str(args.vocab_size),
                     "--data.block_size", str(args.block_size), "--data.batch_size", str(args.batch_size),
                     "--data.val_fraction", "0.05", "--data.val_blocks", "4", "--data.num_workers", "0",
                     "--data.cache_dir", str(work / "tokens"),
                     "--run.root", str(work), "--run.name", name, "--run.wandb", "false",
                     "--run.peak_flops_per_device", str(args.peak_flops),
                     "--trainer.accelerator", args.accelerator, "--trainer.devices", "1", "--trainer.strategy", "auto",
                     "--trainer.max_steps", str(args.steps), "--trainer.accumulate_grad_batches", "1",
                     "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
                     "--trainer.enable_progress_bar", "false", *extra, timeout=args.part_timeout)
    if result.returncode:
        return failure(result)
    rows = read_metrics(work / name)
    warmup = min(5, args.steps // 2)
    return {"tokens_per_s": steady(rows, "perf/tokens_per_sec", warmup), "mfu": steady(rows, "perf/mfu", warmup),
            "peak_gpu_memory_mb": max((r["perf/peak_gpu_mem_mb"] for r in rows if "perf/peak_gpu_mem_mb" in r), default=None),
            "tokens_per_step": args.batch_size * args.block_size, "wall_s": round(time.perf_counter() - started, 1)}


def finetune_part(objective: str, export: Path, args: argparse.Namespace, work: Path, games: Path) -> dict:
    from common.logs import read_metrics

    name = f"finetune-{objective}"
    result = command("-m", "cli.main", "finetune", "--model.pretrained", str(export), "--model.objective", objective,
                     "--model.env", "textworld/coin-easy", "--model.env_options", json.dumps({"cache_dir": str(games)}),
                     "--model.task_pool", "16", "--model.episodes_per_update", str(args.episodes),
                     "--model.updates", str(args.updates),
                     "--model.rollout", json.dumps({"max_turns": 4, "max_new_tokens": 12, "history_turns": 2}),
                     "--run.root", str(work), "--run.name", name, "--run.wandb", "false",
                     "--trainer.accelerator", args.accelerator, "--trainer.devices", "1",
                     "--trainer.enable_progress_bar", "false", timeout=args.part_timeout)
    if result.returncode:
        return failure(result)
    rows = [row for row in read_metrics(work / name) if "finetune/seconds_per_update" in row]
    last = rows[-1]
    return {"seconds_per_update": round(last["finetune/seconds_per_update"], 2),
            "generated_tokens_per_s": round(last["finetune/tokens_per_second"], 1),
            "peak_gpu_memory_mb": last.get("finetune/peak_gpu_memory_mb"), "episodes_per_update": args.episodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="1b", help="configs/pretrain/<preset>.yaml and <preset>-policy.yaml")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each pretraining stage")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--episodes", type=int, default=16, help="sampled episodes per fine-tuning update")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--decode_preset", default="1b")
    parser.add_argument("--peak_flops", type=float, default=H200_PEAK_BF16)
    parser.add_argument("--part_timeout", type=float, default=300)
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one, deleted)")
    args = parser.parse_args()

    report: dict = {"preset": args.preset, "accelerator": args.accelerator}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temporary:
        work = Path(args.work or temporary)
        started = time.perf_counter()
        from envs.corpus import DirtyConfig, OutputConfig, TextWorldCorpusConfig, build_textworld_corpus
        from training.hardware import usable_cores

        games, corpus = work / "games", work / "corpus"
        build_textworld_corpus(TextWorldCorpusConfig(presets=["coin-easy"], games=16, exploratory_per_game=8,
                                                     cache_dir=str(games)),
                               OutputConfig(out=str(corpus), progress=False, overwrite=True, workers=usable_cores()),
                               DirtyConfig())
        report["setup_s"] = round(time.perf_counter() - started, 1)

        stage1 = report["stage1"] = pretrain_part(f"configs/pretrain/{args.preset}.yaml", args, work, corpus, "world", [])
        if "error" not in stage1:
            report["stage2"] = pretrain_part(f"configs/pretrain/{args.preset}-policy.yaml", args, work, corpus, "policy",
                                             ["--model.init_args.stage1", str(work / "world" / "export")])
        if "error" not in report.get("stage2", {"error": "stage 1 failed"}):
            for objective in ("remax", "ppo"):
                report[objective] = finetune_part(objective, work / "policy" / "export", args, work, games)
        decode = command("benchmarks/bench_decode.py", "--preset", args.decode_preset,
                         "--device", "cuda" if args.accelerator == "gpu" else "cpu", "--json", timeout=args.part_timeout)
        lines = [line for line in decode.stdout.splitlines() if line.startswith("{")]
        report["decode"] = json.loads(lines[-1]) if decode.returncode == 0 and lines else failure(decode)
        report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
