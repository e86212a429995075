"""Cross-entropy vs GEM (training/gem.py) for BWArea's stage 2 (behaviour cloning) and the AR baseline's
supervised training, at the quickstart's budget, from the quickstart's own stage-1 export and corpus.

For each loss: stage 2 (and the AR baseline) trained with it by training.experiment.pretrain_pair on the
quickstart run's corpus, reusing its stage-1 run (linked, never retrained, never written); validation of the
final stage-2 model: BC top-1, action entropy (nats, of the 64-way policy) and the simulated-LLM perplexities
(greedy and sampled actions; the AR baseline: perplexity and next-token entropy); then held-out success (greedy, the quickstart's test games) before RL and after ReMax fine-tuning
with the quickstart's RL budget, per RL seed. Before RL: mean ± standard error over held-out games; after RL:
per seed likewise, and the mean ± standard error over seeds of the per-seed means.

Everything lands in --out (results.json, results.md); finished runs and evaluations are reused when the
script runs again (experiment.py's plan checks refuse a changed budget), so an interrupted run picks up
where it stopped.

    python benchmarks/bench_gem.py                                      # runs/qs-avx2 -> runs/bench-gem
    python benchmarks/bench_gem.py --seeds 0 --models bwarea            # one RL seed, BWArea only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from common.logs import read_metrics
from common.stats import Estimate, estimate
from training.experiment import FinetuneBudget, PretrainBudget, evaluate_policy, finetune, pretrain_pair
from training.hardware import probe
from training.rollout import RolloutConfig
from training.runs import read_training_info

REPO = Path(__file__).resolve().parents[1]


LOSSES = ("cross_entropy", "gem")
MODELS = {"bwarea": "BWArea", "ar": "AR baseline"}
POLICY_METRICS = {"val/bc_top1": "BC top-1", "val/action_entropy": "action entropy (nats)",
                  "val/sim_greedy_perplexity": "sim. perplexity greedy", "val/sim_sampled_perplexity": "sim. perplexity sampled"}
AR_METRICS = {"val/perplexity": "perplexity", "val/token_entropy": "token entropy (nats)"}


def quickstart_settings(source: Path) -> dict[str, Any]:
    """The settings the quickstart run in `source` was made with (its summary.json)."""
    summary = source / "summary.json"
    if not summary.is_file():
        sys.exit(f"bench_gem: {summary} is missing; run `bwarea quickstart --out {source}` first.")
    return json.loads(summary.read_text())["config"]


def link_stage1(source: Path, root: Path) -> None:
    """root/world -> the quickstart's stage-1 run, so pretrain_pair reuses it (its plan matches: the loss is not
    part of stage 1's plan)."""
    root.mkdir(parents=True, exist_ok=True)
    world = root / "world"
    if not world.exists():
        os.symlink((source / "pretrain" / "world").resolve(), world)


def held_out(export: Path, settings: dict[str, Any], record: Path) -> tuple[Estimate, float]:
    """Held-out success (%) of greedy play on the quickstart's test games, kept in `record` for re-runs; and the
    seconds it took."""
    if record.is_file():
        recorded = json.loads(record.read_text())
        return Estimate.from_dict(recorded["success"]), recorded["seconds"]
    started = time.perf_counter()
    evaluation, _ = evaluate_policy(export, f"textworld/{settings['textworld_preset']}", range(settings["test_games"]),
                                    {"split": "test", "cache_dir": settings["textworld_cache"]},
                                    RolloutConfig(**settings["evaluation"]))
    seconds = time.perf_counter() - started
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({"export": str(export), "success": evaluation.success_rate.to_dict(),
                                         "seconds": seconds}, indent=2) + "\n")
    return evaluation.success_rate, seconds


def final_validation(export: Path, corpus: Path, budget: PretrainBudget, record: Path) -> dict[str, float]:
    """Stage 2's validation metrics of the final export, kept in `record` for re-runs: pretrain_pair validates
    every 100 steps, so a 150-step run's training_info holds step 99's. The same blocks and metric code as in
    training (PolicyStage's validation, without the information diagnostics), on the exported model."""
    if record.is_file():
        return json.loads(record.read_text())
    from lightning.pytorch import Trainer

    from bwarea import load_pretrained
    from training.data import PretrainData
    from training.pretrain import PolicyStage

    info = read_training_info(export)
    module = PolicyStage(info["stage1"], diagnostic_batches=0)
    module.model = load_pretrained(export)  # configure_model keeps a model that is already there
    data = PretrainData(str(corpus), tokenizer=str(export), vocab_size=budget.vocab_size, block_size=budget.block_size,
                        batch_size=budget.batch_size, val_fraction=budget.val_fraction, val_blocks=budget.val_blocks,
                        cache_dir=budget.cache_dir, progress=False)
    trainer = Trainer(accelerator="cpu", precision=budget.precision, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    atomic_write_text(record, json.dumps(metrics, indent=2) + "\n")
    return metrics


def rl_entropy(run: Path) -> dict[str, float]:
    """The policy's mean entropy over the first and the last RL update's sampled episodes."""
    values = [row["finetune/entropy"] for row in read_metrics(run) if "finetune/entropy" in row]
    return {"first": values[0], "last": values[-1]} if values else {}


def timed(seconds: dict[str, float], name: str, action, reused: bool):
    """action(), its wall time recorded under `name` unless it only reuses finished runs (then an earlier
    invocation's time, if any, stays)."""
    started = time.perf_counter()
    result = action()
    if not reused:
        seconds[name] = time.perf_counter() - started
    return result


def finished(run: Path) -> bool:
    return (run / "export" / "training_info.json").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="runs/qs-avx2", help="a finished `bwarea quickstart` run directory")
    parser.add_argument("--out", default="runs/bench-gem")
    parser.add_argument("--gem_beta", type=float, default=0.7)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="RL seeds")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    settings = quickstart_settings(source)
    corpus = source / "corpus"
    budget = replace(PretrainBudget(**settings["pretrain"]), progress=False, gem_beta=args.gem_beta)
    rl = FinetuneBudget(**{**settings["finetune"], "rollout": RolloutConfig(**settings["finetune"]["rollout"])})
    rl = replace(rl, env=f"textworld/{settings['textworld_preset']}", task_pool=min(rl.task_pool, settings["train_games"]),
                 env_options={**rl.env_options, "cache_dir": settings["textworld_cache"]}, progress=False)
    hardware = probe()
    results: dict[str, Any] = {"machine": f"{hardware.cpu_name}, {hardware.cores} usable cores (shared with other jobs)",
                               "source": str(source), "gem_beta": args.gem_beta, "seeds": args.seeds,
                               "pretrain": asdict(budget), "finetune": json.loads(json.dumps(asdict(rl), default=str)),
                               "seconds": {}, "losses": {}}
    if (out / "results.json").is_file():  # wall times of runs an earlier invocation made
        results["seconds"] = json.loads((out / "results.json").read_text())["seconds"]
    seconds = results["seconds"]

    exports: dict[str, dict[str, Path]] = {}
    for loss in LOSSES:
        root = out / loss / "pretrain"
        link_stage1(source, root)
        exports[loss] = timed(seconds, f"pretrain {loss} (stage 2 and AR)",
                              lambda: pretrain_pair(corpus, root, replace(budget, loss=loss)),
                              reused=finished(root / "policy") and finished(root / "ar"))
        entry = results["losses"][loss] = {}
        policy = final_validation(exports[loss]["bwarea"], corpus, budget, out / loss / "evaluation" / "policy-validation.json")
        ar = read_training_info(exports[loss]["ar"])["val_metrics"]
        entry["validation"] = {"bwarea": {k: policy.get(k) for k in POLICY_METRICS}, "ar": {k: ar.get(k) for k in AR_METRICS}}
        for model in args.models:
            before, spent = held_out(exports[loss][model], settings, out / loss / "evaluation" / f"{model}-before.json")
            seconds[f"evaluate {loss} {model} before"] = spent
            entry.setdefault(model, {})["before"] = before.to_dict()
        print(f"{loss}: validation {entry['validation']}", flush=True)

    for model in args.models:  # BWArea first; within a model seed by seed, both losses at each seed
        for seed in args.seeds:
            for loss in LOSSES:
                name = f"{model}-seed{seed}"
                tuned = timed(seconds, f"finetune {loss} {name}",
                              lambda: finetune(exports[loss][model], out / loss / "finetune", name, replace(rl, seed=seed)),
                              reused=finished(out / loss / "finetune" / name))
                after, spent = held_out(tuned, settings, out / loss / "evaluation" / f"{name}-after.json")
                seconds[f"evaluate {loss} {name} after"] = spent
                entry = results["losses"][loss][model]
                entry.setdefault("after_by_seed", {})[str(seed)] = after.to_dict()
                entry.setdefault("rl_entropy_by_seed", {})[str(seed)] = rl_entropy(out / loss / "finetune" / name)
                print(f"{MODELS[model]} {loss} seed {seed}: held-out success {after.format()} after RL", flush=True)
                atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")

    for loss in LOSSES:
        for model in args.models:
            entry = results["losses"][loss][model]
            means = [Estimate.from_dict(e).mean for e in entry["after_by_seed"].values()]
            entry["after"] = estimate(means, "%").to_dict()
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", report(results, args.models))
    print(report(results, args.models))


def report(results: dict[str, Any], models: list[str]) -> str:
    lines = [f"Supervised loss of stage 2 / the AR baseline: cross-entropy vs GEM (beta {results['gem_beta']}), quickstart "
             f"budget, RL seeds {results['seeds']}. Machine: {results['machine']}.", "",
             "| model | loss | validation | success % before RL | success % after RL, per seed | after RL, mean over seeds "
             "| RL policy entropy, first → last update |",
             "|---|---|---|---|---|---|---|"]
    for model in models:
        names = POLICY_METRICS if model == "bwarea" else AR_METRICS
        for loss in LOSSES:
            entry = results["losses"][loss]
            validation = ", ".join(f"{label} {entry['validation'][model][key]:.3g}" for key, label in names.items()
                                   if entry["validation"][model].get(key) is not None)
            per_seed = ", ".join(Estimate.from_dict(e).format() for e in entry[model]["after_by_seed"].values())
            entropy = ", ".join(f"{e['first']:.2f} → {e['last']:.2f}" for e in entry[model]["rl_entropy_by_seed"].values() if e)
            lines.append(f"| {MODELS[model]} | {loss} | {validation} | {Estimate.from_dict(entry[model]['before']).format()} "
                         f"| {per_seed} | {Estimate.from_dict(entry[model]['after']).format()} | {entropy} |")
    timings = ", ".join(f"{name} {value:.0f} s" for name, value in results["seconds"].items() if value)
    lines += ["", f"Wall times (a shared box: other engineers' jobs ran too; reused steps are not listed): {timings}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
