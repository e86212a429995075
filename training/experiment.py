"""The BWArea-vs-AR pipeline shared by `bwarea quickstart` and benchmarks/bwarea_vs_ar.py.

    corpus = build_corpus(presets, games, root / "corpus", cache_dir)       # walkthrough + exploratory transcripts
    models = pretrain_pair(corpus, root / "pretrain", PretrainBudget())     # {"bwarea": stage-2 export, "ar": ...}
    before = evaluate_policy(models["bwarea"], "textworld/coin-easy", range(20), env_options={"split": "test"})
    tuned = finetune(models["bwarea"], root / "finetune", "bwarea-coin", FinetuneBudget(env="textworld/coin-easy"))

Both models see the same corpus, tokenizer, block size, batch, optimizer settings and token budget
(BWArea: stage 1 for `steps`, then stage 2 on the same blocks; AR: `steps`), and the same RL budget.
Every step reuses a finished run when it finds one, so an interrupted pipeline picks up where it stopped;
each run directory records its settings in plan.json, and a step asked to reuse a directory made with
other settings stops with an error instead of reusing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import bwarea
import envs
from bwarea.device import resolve_device
from common.errors import UserError
from common.files import atomic_write_text
from common.jsonable import jsonable
from common.stats import Estimate, estimate
from training.hardware import usable_cores
from training.rollout import Episode, RolloutEngine
from training.runs import RunDirectory
from training.settings import FinetuneBudget, PretrainBudget, RolloutConfig

PLAN_FILE = "plan.json"
PRETRAINED_START_FIELDS = ("val_blocks", "init_from", "variant", "tuning", "policy_tuning", "ar_tuning", "lora")


def ensure_games(preset: str, split: str, games: int, cache_dir: str | None = None, progress: bool = True) -> int:
    """Generate (once, into the game cache) games 0..games-1 of a TextWorld split, one process per core."""
    from envs.textworld import GameCache, game_seed

    seeds = [game_seed(split, index) for index in range(games)]
    return GameCache(cache_dir).ensure(preset, seeds, workers=usable_cores(), progress=progress)


def build_corpus(presets: Sequence[str], games: int, out: Path, cache_dir: str | None = None,
                 exploratory_per_game: int = 2, progress: bool = True) -> Path:
    """TextWorld training-split transcripts (`bwarea data textworld`), built once under `out`, one process per core
    (each generates the games it needs into the cache)."""
    from envs.corpus import DirtyConfig, OutputConfig, TextWorldCorpusConfig, build_textworld_corpus

    plan = jsonable({"presets": list(presets), "games": games, "exploratory_per_game": exploratory_per_game})
    if not (out / "manifest.json").is_file() or _recorded_plan(out) != plan:
        build_textworld_corpus(
            TextWorldCorpusConfig(presets=list(presets), games=games, exploratory_per_game=exploratory_per_game,
                                  cache_dir=cache_dir),
            OutputConfig(out=str(out), progress=progress, overwrite=True, workers=usable_cores()), DirtyConfig())
        _record_plan(out, plan)
    return out


def corpus_fingerprint(corpus: Path) -> str:
    """SHA-256 over the manifests of every corpus under `corpus`: changes whenever a corpus is rebuilt differently."""
    digest = hashlib.sha256()
    for manifest in sorted(corpus.rglob("manifest.json")):
        digest.update(manifest.relative_to(corpus).as_posix().encode() + b"\0" + manifest.read_bytes())
    return digest.hexdigest()


def _recorded_plan(directory: Path) -> dict[str, Any] | None:
    path = directory / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _record_plan(directory: Path, plan: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / PLAN_FILE, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def _check_plan(directory: Path, plan: dict[str, Any]) -> None:
    """Reuse the run in `directory` only if it was made with the same settings: the first call records them
    in plan.json, later calls compare (a changed budget must not silently reuse an old run)."""
    plan = jsonable(plan)
    recorded = _recorded_plan(directory)
    if recorded is None:
        _record_plan(directory, plan)
        return
    changed = sorted(key for key in plan.keys() | recorded.keys() if plan.get(key) != recorded.get(key))
    if changed:
        raise UserError(f"{directory} was made with other settings ({', '.join(changed)} differ); delete it "
                        "(bwarea quickstart: --fresh true) or choose another output directory.")


def _finished(root: Path, name: str) -> bool:
    return (RunDirectory(root / name).export / "training_info.json").is_file()


def _resume_arguments(root: Path, name: str) -> dict[str, Any]:
    """Resume a run cut off earlier; start afresh otherwise."""
    return {"ckpt_path": "last"} if RunDirectory(root / name).latest_checkpoint() else {"run": {"overwrite": True}}


def pretrain_pair(corpus: Path, root: Path, budget: PretrainBudget) -> dict[str, Path]:
    """Stage 1, stage 2 and the AR baseline on `corpus`; returns the exports {"world", "bwarea", "ar"}."""
    from training.pretrain import run

    def settings(name: str, class_path: str, init_args: dict[str, Any], steps: int, tokenizer: str | None) -> dict:
        optimizer = {"lr": budget.learning_rate, "warmup_steps": budget.warmup_steps}
        return {
            "seed_everything": budget.seed,
            "run": {"name": name, "root": str(root), "checkpoint_every_n_steps": max(steps // 4, 1), "keep_checkpoints": 1,
                    "wandb": False},
            "model": {"class_path": f"training.pretrain.{class_path}", "init_args": {**init_args, "optimizer": optimizer}},
            "data": {"corpus": str(corpus), "tokenizer": tokenizer, "vocab_size": budget.vocab_size,
                     "block_size": budget.block_size, "batch_size": budget.batch_size, "val_fraction": budget.val_fraction,
                     "val_blocks": budget.val_blocks, "cache_dir": budget.cache_dir, "progress": budget.progress},
            "trainer": {"max_steps": steps, "precision": budget.precision, "val_check_interval": min(budget.val_check_interval, steps),
                        "log_every_n_steps": 10, "enable_progress_bar": budget.progress, "enable_model_summary": False,
                        "num_sanity_val_steps": 0},
        }

    lora = {"lora": budget.lora} if budget.lora else {}
    loss = {"loss": budget.loss, "gem_beta": budget.gem_beta}
    shapes = {"preset": budget.preset, "architecture": budget.architecture}
    world = {**shapes, "tuning": budget.tuning, **lora}
    ar = {**shapes, "tuning": budget.ar_tuning, **lora, **loss}
    if budget.init_from is not None:
        world.update(init_from=budget.init_from, variant=budget.variant)
        context = {k: v for k, v in (budget.architecture or {}).items() if k == "max_position_embeddings"}
        ar.update(init_from=budget.init_from, architecture=context or None)
    policy = {"stage1": str(RunDirectory(root / "world").export), "tuning": budget.policy_tuning, **lora, **loss}
    jobs = [("world", "WorldModelStage", world, budget.steps, None),
            ("policy", "PolicyStage", policy, budget.policy_steps, None),
            ("ar", "ARBaseline", ar, budget.steps, str(RunDirectory(root / "world").export))]
    defaults = asdict(PretrainBudget())
    # settings added later (pretrained starts, the loss) enter the plan only when set, so runs recorded before them
    # still match
    optional = (*PRETRAINED_START_FIELDS, "loss", "gem_beta")
    common = {key: value for key, value in asdict(budget).items()
              if key not in ("steps", "policy_steps", "progress", "cache_dir")
              and (key not in optional or value != defaults[key])}
    # what a job does not depend on stays out of its plan (the AR baseline is the same run whatever BWArea tunes)
    unrelated = {"world": ("policy_tuning", "ar_tuning", "loss", "gem_beta"), "policy": ("ar_tuning",),
                 "ar": ("tuning", "policy_tuning")}
    for name, class_path, init_args, steps, tokenizer in jobs:
        plan = {key: value for key, value in common.items() if key not in unrelated[name]}
        _check_plan(root / name, {**plan, "job": class_path, "corpus": corpus_fingerprint(corpus), "steps": steps})
        if not _finished(root, name):
            config = settings(name, class_path, init_args, steps, tokenizer)
            resume = _resume_arguments(root, name)
            config["run"].update(resume.pop("run", {}))
            run({**config, **resume})
    return {"world": RunDirectory(root / "world").export, "bwarea": RunDirectory(root / "policy").export,
            "ar": RunDirectory(root / "ar").export}


def finetune(export: Path, root: Path, name: str, budget: FinetuneBudget) -> Path:
    """ReMax (or another objective) on the training split; returns the fine-tuned export."""
    from training.finetune import run

    plan = {key: value for key, value in asdict(budget).items() if key not in ("progress", "accelerator", "precision")}
    plan["env_options"] = {key: value for key, value in budget.env_options.items() if key != "cache_dir"}
    if not budget.rollout.compile:  # a setting added later enters the plan only when set, so older runs still match
        del plan["rollout"]["compile"]
    _check_plan(root / name, {**plan, "pretrained": str(Path(export).resolve())})
    if not _finished(root, name):
        config = {
            "seed_everything": budget.seed,
            "run": {"name": name, "root": str(root), "checkpoint_every_n_steps": max(budget.updates // 4, 1), "keep_checkpoints": 1,
                    "wandb": False},
            "model": {"pretrained": str(export), "env": budget.env, "env_options": budget.env_options,
                      "task_pool": budget.task_pool, "episodes_per_update": budget.episodes_per_update,
                      "updates": budget.updates, "objective": budget.objective,
                      "objective_options": budget.objective_options, "rollout": asdict(budget.rollout),
                      "learning_rate": budget.learning_rate, "seed": budget.seed, "tuning": budget.tuning,
                      **({"lora": budget.lora} if budget.lora else {})},
            "trainer": {"enable_progress_bar": budget.progress, "enable_model_summary": False, "log_every_n_steps": 1,
                        "accelerator": budget.accelerator, "precision": budget.precision},
        }
        resume = _resume_arguments(root, name)
        config["run"].update(resume.pop("run", {}))
        run({**config, **resume})
    return RunDirectory(root / name).export


def model_costs(export: Path, context: int) -> dict[str, float]:
    """Parameters and FLOPs per token of a saved model at `context` tokens (bwarea.diagnostics.flops_per_token:
    training per stage and generation), from its shapes alone."""
    from bwarea.diagnostics import flops_per_token

    model = bwarea.load_shapes(export)
    return {"parameters": model.num_parameters(), **flops_per_token(model, context)}


def diagnostics(exports: dict[str, Path]) -> dict[str, float]:
    """What the pretraining validation says about the latent actions (training.pretrain): how much of the next
    token the action carries (nats), code usage, and the simulated-LLM perplexities of stage 2."""
    from training.runs import read_training_info

    wanted = ("val/action_information", "val/next_token_entropy", "val/next_token_entropy_given_action",
              "val/alive_codes", "val/largest_code_share", "val/sim_greedy_perplexity", "val/sim_all_policy_greedy_perplexity",
              "val/bc_top1")
    result = {}
    for stage, key in (("stage 1", "world"), ("stage 2", "bwarea")):
        metrics = read_training_info(exports[key])["val_metrics"]
        result.update({f"{stage} {name[4:]}": metrics[name] for name in wanted if name in metrics})
    return result


@dataclass
class PolicyEvaluation:
    """Held-out results of one model on one environment: success rate and normalised score in %, each a
    mean with its standard error over episodes."""

    env: str
    success_rate: Estimate
    normalised_score: Estimate
    dropped: int

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "success_rate": self.success_rate.to_dict(),
                "normalised_score": self.normalised_score.to_dict(), "dropped": self.dropped}


def evaluate_policy(export: Path, env: str, seeds: Iterable[int], env_options: dict[str, Any] | None = None,
                    rollout: RolloutConfig | None = None, greedy: bool = True, batch_size: int = 16,
                    generator_seed: int = 0, progress: bool = False,
                    device: str | None = None) -> tuple[PolicyEvaluation, list[Episode]]:
    """Play one episode per seed with the model as the policy (greedy actions by default), on `device`
    (default: the GPU when there is one)."""
    model = bwarea.load_pretrained(export, map_location=resolve_device(device or "auto")).eval()
    engine = RolloutEngine(model, bwarea.load_tokenizer(export), rollout or RolloutConfig(max_turns=8, max_new_tokens=12))
    options = dict(env_options or {})
    seeds = list(seeds)
    episodes: list[Episode] = []
    with tqdm(total=len(seeds), desc=f"evaluating on {env}", unit="episode", disable=not progress) as bar:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            # per position, not per game: the same game listed twice is two independent samples
            episodes += engine.run(lambda: envs.make(env, **options), chunk, greedy=greedy,
                                   sampling_seeds=[generator_seed * 1_000_003 + start + i for i in range(len(chunk))])
            bar.update(len(seeds[start:start + batch_size]))
    kept = [e for e in episodes if not e.dropped]
    if not kept:
        raise RuntimeError(f"every evaluation episode on {env} failed; the first error: {episodes[0].error}")
    return PolicyEvaluation(env, estimate([100.0 * e.won for e in kept], "%"),
                            estimate([100.0 * e.normalised_score for e in kept], "%"), len(episodes) - len(kept)), episodes


def random_agent_evaluation(env: str, seeds: Iterable[int], env_options: dict[str, Any] | None = None,
                            max_turns: int = 8, seed: int = 0, samples: int = 16) -> PolicyEvaluation:
    """Held-out success and normalised score (%) of the uniformly random agent (agents.baselines.RandomAgent:
    uniform over the admissible actions, i.e. the valid answers or commands) on the episodes a model is evaluated
    on. Each episode is played `samples` times with different agent seeds and averaged, so the estimate's standard
    error is over episodes (games) only: one random play per game varies a lot (0-25 % on the quickstart's games)."""
    from agents.baselines import RandomAgent, RandomAgentConfig

    wins, scores = [], []
    environment = envs.make(env, **dict(env_options or {}))
    try:
        for episode_seed in seeds:
            game_wins, game_scores = [], []
            for sample in range(samples):
                # a stream per (game, sample): shared streams would make the games' outcomes correlated
                agent = RandomAgent(RandomAgentConfig(seed=(seed * 1_000_003 + int(episode_seed)) * samples + sample))
                observation, info = environment.reset(seed=int(episode_seed))
                agent.reset(info)
                for _ in range(max_turns):
                    observation, _, terminated, truncated, info = environment.step(agent.act(observation, info))
                    if terminated or truncated:
                        break
                won, max_score = bool(info.get("won", False)), float(info.get("max_score", 0) or 0)
                game_wins.append(100.0 * won)
                game_scores.append(100.0 * (float(info.get("score", 0) or 0) / max_score if max_score else won))
            wins.append(sum(game_wins) / samples)
            scores.append(sum(game_scores) / samples)
    finally:
        environment.close()
    return PolicyEvaluation(env, estimate(wins, "%"), estimate(scores, "%"), dropped=0)
