"""Dirty-data experiment: does pretraining on partly corrupted text hurt BWArea less than the AR baseline?

For each dirty ratio p, a share p of the training documents is corrupted (data.dirty: random tokens
replacing half of the words, envs/corruption.py) while the validation documents stay clean, and three
models are pretrained with the same preset, token budget, tokenizer and optimizer settings:
  - stage 1 (world model + inverse dynamics) -> clean-validation perplexity of the world model under the
    inverse dynamics' actions;
  - stage 2 (policy, behaviour cloning, on the same dirty data) -> perplexity of the "simulated LLM" (world
    model driven by the policy's greedy / sampled actions);
  - the AR baseline of the world model's shape -> its perplexity.
Validation is a separate clean corpus of other TextWorld games (episodes of one game are near-duplicates,
so a document-level split would measure memorisation). All runs use one tokenizer (trained on the clean
training corpus) and the same validation blocks, so the perplexities are comparable across p and models.

    python benchmarks/dirty_data.py          # 60 training games, 16 held-out games, tiny preset, 600 steps, p in {0, 0.3}
    python benchmarks/dirty_data.py --games 24 --val_games 8 --steps 120 --out /tmp/dirty   # quicker, noisier

Prints a table and the token budget; runs and the corpus are kept under --out (rerunning with the same
preset, steps, ratio and seed reuses finished runs; the corpus is reused as long as it exists).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.data import CorpusSpec, train_corpus_tokenizer
from training.pretrain import run
from training.runs import read_training_info

REPO = Path(__file__).resolve().parents[1]


def build_corpus(corpus: Path, games: int, first_game: int, exploratory: int, workers: int) -> Path:
    """TextWorld corpus of `games` games (spread over the presets), each preset's games from index `first_game`."""
    from envs.corpus import DirtyConfig, OutputConfig, TextWorldCorpusConfig, build_textworld_corpus

    if not (corpus / "manifest.json").is_file():
        build_textworld_corpus(TextWorldCorpusConfig(games=games, first_game=first_game, exploratory_per_game=exploratory),
                               OutputConfig(out=str(corpus), workers=workers, overwrite=True), DirtyConfig())
    return corpus


def shared_tokenizer(corpus: Path, vocab_size: int, cache: Path) -> Path:
    """One tokenizer for every run, trained on the clean training split."""
    return train_corpus_tokenizer(CorpusSpec(str(corpus)), vocab_size, max_chars=10**9, cache_dir=cache)


def pretrain(preset: str, stage: str, name: str, common: list[str], extra: list[str]) -> Path:
    run_dir = Path(common[common.index("--run.root") + 1]) / name
    if (run_dir / "export" / "training_info.json").is_file():
        return run_dir
    config = REPO / "configs" / "pretrain" / f"{preset}{stage}.yaml"
    started = time.perf_counter()
    path = run(["--config", str(config), "--run.name", name, "--run.overwrite", "true", *common, *extra])
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dirty-data"), help="Directory for the corpus and runs.")
    parser.add_argument("--games", type=int, default=60, help="TextWorld games in the corpus.")
    parser.add_argument("--exploratory", type=int, default=4, help="Exploratory episodes per game (plus one walkthrough).")
    parser.add_argument("--workers", type=int, default=2, help="Processes generating the corpus.")
    parser.add_argument("--preset", default="tiny", help="configs/pretrain/<preset>{,-policy,-ar}.yaml")
    parser.add_argument("--steps", type=int, default=600, help="Optimizer steps of every run (same budget for all).")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3], help="Dirty ratios p.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of model initialisation and data order (repeat to gauge noise).")
    parser.add_argument("--vocab_size", type=int, default=4096, help="Size of the shared tokenizer.")
    parser.add_argument("--val_games", type=int, default=16, help="Held-out TextWorld games of the validation corpus.")
    args = parser.parse_args()

    started = time.perf_counter()
    out = args.out.resolve()
    from envs.corpus import TextWorldCorpusConfig

    presets = len(TextWorldCorpusConfig().presets)  # games are spread over the presets; validation games come after
    corpus = build_corpus(out / "corpus", args.games, 0, args.exploratory, args.workers)
    val_corpus = build_corpus(out / "val-corpus", args.val_games, -(-args.games // presets), args.exploratory, args.workers)
    cache = out / "cache"
    tokenizer = shared_tokenizer(corpus, args.vocab_size, cache)
    common = ["--data.corpus", str(corpus), "--data.tokenizer", str(tokenizer), "--data.cache_dir", str(cache),
              "--data.progress", "false", "--data.val_corpus", str(val_corpus), "--run.root", str(out / "runs"), "--run.wandb", "false",
              "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps),
              "--trainer.enable_progress_bar", "false", "--run.checkpoint_every_n_steps", str(args.steps),
              "--seed_everything", str(args.seed), "--data.shuffle_seed", str(args.seed)]

    results = []
    for ratio in args.ratios:
        # the name holds every setting that differs between invocations, so a rerun only reuses runs it would redo
        tag = f"{args.preset}-p{ratio:g}-{args.steps}steps-seed{args.seed}"
        print(f"dirty ratio {ratio:g}", flush=True)
        dirty = ["--data.dirty.ratio", str(ratio)]
        world = pretrain(args.preset, "", f"{tag}-world", common, dirty)
        policy = pretrain(args.preset, "-policy", f"{tag}-policy", common,
                          dirty + ["--model.init_args.stage1", str(world / "export")])
        ar = pretrain(args.preset, "-ar", f"{tag}-ar", common, dirty)
        infos = {name: read_training_info(path / "export") for name, path in (("world", world), ("policy", policy), ("ar", ar))}
        assert len({info["tokens_seen"] for info in infos.values()}) == 1
        results.append({
            "p": ratio, "tokens": infos["ar"]["tokens_seen"],
            "ar": infos["ar"]["val_metrics"]["val/perplexity"],
            "world_id": infos["world"]["val_metrics"]["val/perplexity"],
            "sim_greedy": infos["policy"]["val_metrics"]["val/sim_greedy_perplexity"],
            "sim_sampled": infos["policy"]["val_metrics"]["val/sim_sampled_perplexity"],
            "bc_top1": infos["policy"]["val_metrics"]["val/bc_top1"],
            "unigram": infos["policy"]["val_metrics"]["val/unigram_perplexity"],
        })

    manifest = json.loads((corpus / "manifest.json").read_text())
    val_manifest = json.loads((val_corpus / "manifest.json").read_text())
    print(f"\ntraining corpus: {manifest['documents']} TextWorld documents ({args.games} games), {manifest['characters']:,} "
          f"characters; validation: {val_manifest['documents']} clean documents of {args.val_games} other games; preset "
          f"{args.preset}; {args.steps} steps = {results[0]['tokens']:,} training tokens per run")
    print(f"{'p':>5} {'AR ppl':>9} {'world|ID ppl':>13} {'sim greedy':>11} {'sim sampled':>12} {'BC top-1':>9} {'unigram':>8}")
    for r in results:
        print(f"{r['p']:>5g} {r['ar']:>9.2f} {r['world_id']:>13.2f} {r['sim_greedy']:>11.2f} {r['sim_sampled']:>12.2f} "
              f"{r['bc_top1']:>9.3f} {r['unigram']:>8.1f}")
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"p={r['p']:g} vs p={base['p']:g}: AR x{r['ar'] / base['ar']:.3f}, world|ID x{r['world_id'] / base['world_id']:.3f}, "
                  f"simulated greedy x{r['sim_greedy'] / base['sim_greedy']:.3f}, sampled x{r['sim_sampled'] / base['sim_sampled']:.3f}")
    (out / f"results-{args.preset}-{args.steps}steps-seed{args.seed}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
