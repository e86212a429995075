"""The BWArea claim, measured: does RL on the cognitive policy alone (world model frozen) do as well as RL
on a whole autoregressive model of the same size, from the same pretraining data and the same RL budget?

Pipeline (training/experiment.py, the same code as `bwarea quickstart`):
 1. one pretraining corpus: transcripts of the training-split games of every TextWorld preset plus the
    training split of the BIG-Bench Hard tasks (zero-shot prompt + "The answer is X.");
 2. BWArea (stage 1, stage 2) and the equal-size AR baseline pretrained on it with the same budget;
 3. per task group (each TextWorld preset; the BBH tasks together) and per RL seed: ReMax fine-tuning of
    BWArea (policy only) and of the AR baseline (all weights) with the same budget;
 4. held-out evaluation (test split, greedy) before RL and after each seed's RL.

The table reports held-out success (%) before RL (mean ± standard error over held-out episodes) and after
RL (mean ± standard error over RL seeds of each seed's held-out mean). Everything lands in --out
(results.md, results.json); finished steps (corpus, pretraining, RL runs, held-out evaluations under
evaluation/) are reused when the script is run again, and a changed budget with the same --out stops with
an error naming what differs instead of reusing runs made for the old one. Task groups can run in
parallel on one --out with --only, once a first invocation has finished the corpus and pretraining (two
started together on a fresh --out would both build them); a last invocation without --only assembles
the full table.

    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar                       # defaults: ~1 h on 2 cores
    python benchmarks/bwarea_vs_ar.py --out runs/claim-small --pretrain_steps 200 --updates 8 --seeds 0 1
    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar --only bbh            # pretrains, then one group
    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar --only textworld/coin-easy &   # then in parallel
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from bwarea import load_tokenizer
from bwarea.adaptation import start_model
from common.files import atomic_write_text
from common.stats import Estimate, estimate, macro_average
from envs.corpus import BBHCorpusConfig, DirtyConfig, OutputConfig, build_bbh_corpus
from training.experiment import (FinetuneBudget, PretrainBudget, build_corpus, diagnostics, evaluate_policy, finetune,
                                 model_costs, pretrain_pair, random_agent_evaluation)
from training.rollout import RolloutConfig
from training.runs import write_training_info

REPO = Path(__file__).resolve().parents[1]


MODELS = ("bwarea", "ar")
RL_PARTS = {"full": "all weights", "head": "head only", "lora": "LoRA"}


def model_labels(args: argparse.Namespace) -> dict[str, str]:
    """Row labels naming what RL trains in each model."""
    return {"bwarea": f"BWArea (RL on the policy: {RL_PARTS[args.rl_tuning]})",
            "ar": f"AR baseline (RL: {RL_PARTS[args.rl_ar_tuning]})"}
BBH_TASKS = ["boolean_expressions", "web_of_lies", "navigate", "sports_understanding"]


def groups(args: argparse.Namespace) -> dict[str, dict]:
    """Task groups: name -> environments, rollout settings and held-out seeds."""
    textworld = RolloutConfig(max_turns=args.max_turns, max_new_tokens=12, history_turns=3)
    bbh = RolloutConfig(max_turns=1, max_new_tokens=args.bbh_max_new_tokens, prompt_format="observation")
    presets = args.textworld_presets if args.rl_textworld_presets is None else args.rl_textworld_presets
    result = {f"textworld/{preset}": {"envs": [f"textworld/{preset}"], "rollout": textworld, "options": {"cache_dir": args.textworld_cache},
                                      "test": args.test_games, "pool": args.train_games} for preset in presets}
    if args.bbh_tasks:
        result["bbh"] = {"envs": [f"bbh/{task}" for task in args.bbh_tasks], "rollout": bbh,
                         "options": {"data_dir": args.bbh_dir}, "test": args.bbh_test_items, "pool": args.bbh_train_items}
    return result


def held_out(export: Path, group: dict, record: Path) -> Estimate:
    """Held-out success (%): per environment, then the macro average over a group's environments. Kept in
    `record` (JSON), so a re-run, or another invocation sharing --out, reuses it."""
    plan = {"envs": group["envs"], "test_episodes": group["test"], "rollout": asdict(group["rollout"])}
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if recorded.get("plan") == plan:
        return Estimate.from_dict(recorded["success"])
    per_env = [evaluate_policy(export, env, range(group["test"]), {**group["options"], "split": "test"}, group["rollout"])[0].success_rate
               for env in group["envs"]]
    result = per_env[0] if len(per_env) == 1 else macro_average(per_env, "%")
    atomic_write_text(record, json.dumps({"plan": plan, "success": result.to_dict()}, indent=2) + "\n")
    return result


def reference_rows(args: argparse.Namespace, chosen: dict[str, dict], out: Path) -> dict[str, dict[str, dict]]:
    """Rows that frame the table: the uniformly random agent (uniform over the valid answers / admissible
    commands, on the same held-out episodes) and, with --init_from, the pretrained LM zero-shot (greedy)."""
    rows: dict[str, dict[str, dict]] = {}
    zero_shot = None
    if args.init_from:
        zero_shot = out / "zero-shot" / "export"
        if not (zero_shot / "training_info.json").is_file():
            model = start_model(args.init_from, "ar", max_position_embeddings=args.max_position_embeddings)
            model.save_pretrained(zero_shot, tokenizer=load_tokenizer(args.init_from))
            write_training_info(zero_shot, {"stage": "converted", "variant": "ar", "source": str(args.init_from)})
    for name, group in chosen.items():
        if args.only and name not in args.only:
            continue
        options = {**group["options"], "split": "test"}
        per_env = [random_agent_evaluation(env, range(group["test"]), options, group["rollout"].max_turns).success_rate
                   for env in group["envs"]]
        rows.setdefault(name, {})["random"] = (per_env[0] if len(per_env) == 1 else macro_average(per_env, "%")).to_dict()
        if zero_shot is not None:
            rows[name]["zero_shot"] = held_out(zero_shot, group, out / "evaluation" / f"zero-shot-{name.replace('/', '-')}.json").to_dict()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bwarea-vs-ar")
    parser.add_argument("--textworld_presets", nargs="*", default=["coin-easy", "treasure-easy"])
    parser.add_argument("--rl_textworld_presets", nargs="*", default=None,
                        help="TextWorld presets that get RL rows (default: all of --textworld_presets; the corpus always "
                             "holds every preset)")
    parser.add_argument("--train_games", type=int, default=48, help="training games per preset (corpus + RL pool)")
    parser.add_argument("--test_games", type=int, default=20, help="held-out games per preset")
    parser.add_argument("--textworld_cache", default=None)
    parser.add_argument("--max_turns", type=int, default=8)
    parser.add_argument("--bbh_tasks", nargs="*", default=BBH_TASKS)
    parser.add_argument("--bbh_dir", default=str(REPO.parent / "shared" / "data" / "bbh"))
    parser.add_argument("--bbh_train_items", type=int, default=100, help="RL pool per BBH task (training split)")
    parser.add_argument("--bbh_test_items", type=int, default=50, help="held-out items per BBH task")
    parser.add_argument("--bbh_max_new_tokens", type=int, default=10, help="tokens generated per BBH answer")
    parser.add_argument("--pretrain_steps", type=int, default=400, help="stage-1 and AR steps (batch_size x block_size tokens each)")
    parser.add_argument("--policy_steps", type=int, default=200)
    parser.add_argument("--val_check_interval", type=int, default=100, help="pretraining steps between validations")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--pretrain_lr", type=float, default=2e-3)
    parser.add_argument("--precision", default="auto", help="pretraining precision (Lightning); auto: bf16-mixed where bf16 is native, else 32-true")
    parser.add_argument("--updates", type=int, default=12, help="ReMax updates per run")
    parser.add_argument("--episodes_per_update", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--init_from", default=None,
                        help="a pretrained Hugging Face causal LM (directory or .gguf): BWArea is built from it and the AR "
                             "baseline is the same LM, both adapted on the corpus with the same budget")
    parser.add_argument("--variant", default="bwarea", choices=["bwarea", "cola"])
    parser.add_argument("--num_actions", type=int, default=64)
    parser.add_argument("--code_dim", type=int, default=None, help="with --init_from (default: min(256, hidden size))")
    parser.add_argument("--max_position_embeddings", type=int, default=None, help="with --init_from: cap the context")
    parser.add_argument("--tuning", default="full", help="stage 1: full, actions or lora")
    parser.add_argument("--policy_tuning", default="full", help="stage 2: full, head or lora")
    parser.add_argument("--ar_tuning", default="full", help="AR baseline pretraining: full or lora")
    parser.add_argument("--rl_tuning", default="full", choices=sorted(RL_PARTS), help="BWArea RL (the policy): full, head or lora")
    parser.add_argument("--rl_ar_tuning", default="full", choices=["full", "lora"], help="AR RL: full or lora")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--accelerator", default="auto", help="RL fine-tuning's Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--only", nargs="+", default=None, metavar="GROUP",
                        help="run only these task groups (e.g. textworld/coin-easy bbh); the corpus and pretraining "
                             "still cover every preset and task, so invocations with different --only share --out")
    args = parser.parse_args()
    chosen = groups(args)
    unknown = sorted(set(args.only or []) - set(chosen))
    if unknown:   # before an hour of pretraining, not after
        parser.error(f"--only names unknown task groups {unknown}; choose from {sorted(chosen)}.")

    started = time.perf_counter()
    out = Path(args.out)
    corpus = out / "corpus"
    if args.textworld_presets:
        build_corpus(args.textworld_presets, args.train_games, corpus / "textworld", args.textworld_cache)
    bbh_manifest = corpus / "bbh" / "manifest.json"
    if args.bbh_tasks and (not bbh_manifest.is_file()
                           or json.loads(bbh_manifest.read_text())["settings"]["tasks"] != args.bbh_tasks):
        build_bbh_corpus(BBHCorpusConfig(tasks=args.bbh_tasks, data_dir=args.bbh_dir), OutputConfig(out=str(corpus / "bbh"), overwrite=True),
                         DirtyConfig())
    lora = {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}
    architecture = None
    if args.init_from:
        architecture = {"num_actions": args.num_actions, **({"code_dim": args.code_dim} if args.code_dim else {}),
                        **({"max_position_embeddings": args.max_position_embeddings} if args.max_position_embeddings else {})}
    budget = PretrainBudget(steps=args.pretrain_steps, policy_steps=args.policy_steps, block_size=args.block_size,
                            batch_size=args.batch_size, learning_rate=args.pretrain_lr, precision=args.precision,
                            val_check_interval=args.val_check_interval,
                            architecture=architecture, init_from=args.init_from, variant=args.variant, tuning=args.tuning,
                            policy_tuning=args.policy_tuning, ar_tuning=args.ar_tuning, lora=lora if args.init_from else None)
    exports = pretrain_pair(corpus, out / "pretrain", budget)

    evaluations = out / "evaluation"
    evaluations.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = reference_rows(args, chosen, out)
    rl_tuning = {"bwarea": args.rl_tuning, "ar": args.rl_ar_tuning}
    labels = model_labels(args)
    for name, group in chosen.items():
        if args.only and name not in args.only:
            continue
        for key in MODELS:
            run = f"{key}-{name.replace('/', '-')}"
            before = held_out(exports[key], group, evaluations / f"{run}-pretrained.json")
            after_by_seed = []
            for seed in args.seeds:
                rl = FinetuneBudget(env=group["envs"], env_options=group["options"], task_pool=group["pool"],
                                    episodes_per_update=args.episodes_per_update, updates=args.updates,
                                    rollout=group["rollout"], learning_rate=args.learning_rate, seed=seed,
                                    tuning=rl_tuning[key], lora=lora if rl_tuning[key] == "lora" else None,
                                    accelerator=args.accelerator)
                tuned = finetune(exports[key], out / "finetune", f"{run}-seed{seed}", rl)
                after_by_seed.append(held_out(tuned, group, evaluations / f"{run}-seed{seed}.json").mean)
            results.setdefault(name, {})[key] = {"before": before.to_dict(), "after": estimate(after_by_seed, "%").to_dict(),
                                                 "after_by_seed": after_by_seed}
            print(f"{name} {labels[key]}: before {before.format()}, after {estimate(after_by_seed).format()}", flush=True)

    costs = {key: model_costs(exports[key], args.block_size) for key in MODELS}
    latent = diagnostics(exports)
    start = f"both built from {args.init_from} ({args.variant})" if args.init_from else "tiny preset, from scratch"
    lines = [f"Held-out success (%), before RL (± s.e. over held-out episodes) and after ReMax (± s.e. over RL seeds "
             f"{args.seeds}). Pretraining: {budget.tokens:,} tokens per model ({start}; stage 1 {args.tuning}, stage 2 "
             f"{args.policy_tuning}, AR {args.ar_tuning}); RL: {args.updates} updates x {args.episodes_per_update} episodes "
             f"per run (BWArea policy {args.rl_tuning}, AR {args.rl_ar_tuning}). This invocation: "
             f"{(time.perf_counter() - started) / 60:.0f} min (finished steps reused).", "",
             "| task | " + " | ".join(f"{labels[key]} before | {labels[key]} after" for key in MODELS) + " | random | LM zero-shot |",
             "|---|" + "---|---|" * len(MODELS) + "---|---|"]
    for name, by_model in results.items():
        if not all(key in by_model for key in MODELS):
            continue
        cells = [f"{Estimate.from_dict(by_model[key][phase]).format()}" for key in MODELS for phase in ("before", "after")]
        references = [Estimate.from_dict(by_model[key]).format() if key in by_model else "-" for key in ("random", "zero_shot")]
        lines.append(f"| {name} | " + " | ".join(cells + references) + " |")
    lines += ["", f"| model | parameters | training GFLOP/token (all weights, context {args.block_size}) | generation GFLOP/token |",
              "|---|---:|---:|---:|"]
    for key, row in costs.items():
        train = (f"stage 1 {row['train_stage1'] / 1e9:.3g}, stage 2 {row['train_stage2'] / 1e9:.3g}" if "train_stage1" in row
                 else f"{row['train'] / 1e9:.3g}")
        lines.append(f"| {labels[key]} | {row['parameters']:,} | {train} | {row['generate'] / 1e9:.3g} |")
    lines += ["", "Latent actions on validation text (nats per token): "
              + ", ".join(f"{name} {value:.4g}" for name, value in latent.items()) + "."]
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "pretrain_tokens": budget.tokens, "results": results,
                                                 "costs": costs, "diagnostics": latent}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
