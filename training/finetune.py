"""Reward fine-tuning of the cognitive policy (BWArea) or of the whole AR baseline, with Lightning.

    bwarea finetune --config configs/finetune/textworld-remax.yaml
    bwarea finetune --config configs/finetune/textworld-remax.yaml --ckpt_path last      # resume

One update = one batch of rollouts and one optimizer step (ReMax, RLOO, PM-RLHF, KL-RLHF), or a few epochs of
minibatch steps (the clipped-ratio objectives: PPO, GRPO, Dr. GRPO, REINFORCE++). What an update plays follows
from the objective's registry entry (training/objectives.py): rollout.group_size samples per task, a greedy twin
per task, a value model, the reference policy. For BWArea only the cognitive policy is trained; the world model,
inverse dynamics and codebook stay frozen. The same code fine-tunes the AR baseline (tokens are its actions, all
weights train), which is the comparison every report shows.

Checkpoints and logs count updates: Lightning's step advances once per update whatever the optimizer did (an
update without learning signal takes no optimizer step but is still checkpointed). Exact resume: the tasks of
update u and the sampling generators are pure functions of (seed, u), and u is stored in the checkpoint with the
weights, the optimizer state and the (adaptive) objective options.

Processes: DDP (every process holds the whole model; `--trainer.strategy ddp`) or the trainable policy sharded over
them with FSDP2 (Lightning's ModelParallelStrategy; rollouts then play through a whole-policy replica, see
training/sharding.py). Either way process r plays positions r, r+N, ... of every rollout batch.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, IterableDataset

import bwarea
import envs
from bwarea import ScalarModel
from bwarea.adaptation import prepare_tuning
from bwarea.lora import LoraSettings, has_lora, merge_lora
from common.errors import UserError
from training.adam_mini import AdamMini, adam_mini_param_groups
from training.objectives import OBJECTIVES, Needs, RolloutBatch, get_objective
from training.reward_model import RewardScorer
from training.rollout import Episode, ReferencePolicy, RolloutEngine, build_rollout_batch
from training.runs import RunCLI, peak_memory_mb, read_training_info, run_cli
from training.settings import RolloutConfig
from training.sharding import copy_whole_weights, local_elements, rollout_replica, shard, whole

TRAINABLE_PARTS = ("policy", "world", "inverse", "codebook")
# model_type -> the token trunk PPO's value model copies (CoLA's policy reads the frozen LM's states)
VALUE_TRUNKS = {"bwarea": "policy.trunk", "bwarea-cola": "lm", "bwarea-ar": "trunk"}


def task_seeds(update: int, per_update: int, pool: int, seed: int) -> list[int]:
    """The task indices of update `update`: a stream of seeded permutations of range(pool)."""
    picks = []
    for k in range(update * per_update, (update + 1) * per_update):
        epoch, position = divmod(k, pool)
        order = torch.randperm(pool, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        picks.append(int(order[position]))
    return picks


class FinetuneError(UserError, ValueError):
    """A fine-tuning setting or input that cannot be used."""


class FinetuneStopped(UserError, RuntimeError):
    """Too many consecutive updates had to be skipped (non-finite loss, rewards or gradients)."""


# exports a reward fine-tune may start from: stage 2 (a whole BWArea model), the AR baseline, or an earlier fine-tune
STARTING_STAGES = {"policy", "ar", "finetune"}


class _Updates(IterableDataset):
    """Yields the indices of the updates still to run (the module's counter survives resumes)."""

    def __init__(self, module: "FinetuneModule"):
        self.module = module

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.module.completed_updates, self.module.hparams.updates))


class FinetuneModule(L.LightningModule):
    """Policy fine-tuning against environment (or reward-model) rewards with manual optimization.

    Args:
        pretrained: directory of a save_pretrained export to start from (a stage-2 BWArea model, or the AR baseline).
        env: environment name(s) for envs.make, e.g. "textworld/coin-easy", "crafter", or a list such as
            ["bbh/navigate", "bbh/web_of_lies"] (the task pool then holds task_pool tasks of each).
        env_options: keyword arguments for envs.make (the training split is always used).
        task_pool: training tasks per environment (indices 0..task_pool-1 of the training split / world seeds).
        episodes_per_update: sampled episodes per update, rollout.group_size per task (objectives with a greedy
            baseline also play one greedy episode per task).
        updates: number of updates (rollout batches) to run; checkpoints and logged steps count updates.
        objective: a name of training.objectives.OBJECTIVES: "remax", "rloo", "pm_rlhf", "conditional_pm_rlhf",
            "kl_rlhf", "grpo", "dr_grpo", "reinforce_pp" or "ppo".
        objective_options: keyword arguments of the objective (e.g. beta, kl_coef, advantage_clip, baseline,
            estimator, placement, gamma; PPO: gamma, lam, kl_coef, pm_coef, clip_ratio, value_coef, value_clip).
        rollout: how episodes are played (horizon, tokens per turn, temperature, prompt format, group_size).
        optimizer: "adamw" or "adam_mini" (training/adam_mini.py: one second moment per parameter block, about half
            the optimizer state; weight decay then applies to linear and embedding weights only).
        learning_rate / weight_decay / max_grad_norm: optimizer settings and gradient-norm clipping (the policy's and
            PPO's value model's gradients are clipped separately).
        trainable: parts to train; BWArea fine-tuning trains only "policy" (anything else is refused).
        tuning: how the policy trains: "full" (BWArea: the whole cognitive policy; AR: every weight), "head"
            (BWArea/CoLA: only the K-way action head, the trunk stays as pretrained) or "lora" (LoRA adapters on the
            policy trunk plus the head for BWArea, on the trunk for AR; merged into the export).
        lora: LoRA rank, alpha, dropout and target layers (tuning: lora).
        reward_model: optional directory of a ScalarModel export; its score of each episode's transcript
            replaces the environment reward.
        max_bad_batches: consecutive skipped updates (non-finite loss/advantages, no usable episode)
            tolerated before the run stops with an error.
        micro_batch_size: episodes per backward pass of the one-step objectives (None: the whole batch in one
            pass). Smaller bounds the activation memory at the cost of one extra gradient-free forward pass;
            the gradient is the same up to float rounding. The clipped-ratio objectives split their batch with
            ratio_minibatches instead.
        ratio_epochs / ratio_minibatches: epochs over the rollout batch and minibatches per epoch (reshuffled every
            epoch) of the clipped-ratio objectives (PPO, GRPO, Dr. GRPO, REINFORCE++).
        ratio_target_kl: clipped-ratio objectives stop an update's remaining minibatches once the mean KL between
            the sampling policy and the current one exceeds 1.5 x this (None: never).
        kl_target / kl_adapt_rate: adaptive KL coefficient (Ziegler et al., 2019): after every update the objective's
            KL coefficient (its registry entry's kl_option: kl_coef, or beta for kl_rlhf) is multiplied by
            1 + clip(KL / kl_target - 1, -0.2, 0.2) x kl_adapt_rate, with KL the update's mean KL to the reference
            per action. None: the coefficient stays fixed.
        value_learning_rate: learning rate of PPO's value model.
        gradient_snr: log finetune/gradient_snr = |G|^2 / (estimated variance of G), the batch gradient's
            signal-to-noise ratio, from the per-micro-batch gradients of the one-step objectives (needs
            micro_batch_size smaller than the batch; holds two extra copies of the gradient).
        seed: seeds task order and sampling.
    """

    def __init__(self, pretrained: str, env: str | list[str] = "textworld/coin-easy", env_options: dict[str, Any] | None = None,
                 task_pool: int = 64, episodes_per_update: int = 8, updates: int = 50, objective: str = "remax",
                 objective_options: dict[str, Any] | None = None, rollout: RolloutConfig = RolloutConfig(),
                 optimizer: Literal["adamw", "adam_mini"] = "adamw", learning_rate: float = 3e-5,
                 weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                 trainable: list[str] | None = None, tuning: Literal["full", "head", "lora"] = "full",
                 lora: LoraSettings = LoraSettings(), reward_model: str | None = None, max_bad_batches: int = 3,
                 micro_batch_size: int | None = None, ratio_epochs: int = 4, ratio_minibatches: int = 2,
                 ratio_target_kl: float | None = None, kl_target: float | None = None, kl_adapt_rate: float = 0.1,
                 value_learning_rate: float = 1e-4, gradient_snr: bool = False, seed: int = 0):
        super().__init__()
        self.save_hyperparameters({**locals_without_self(locals()), "rollout": asdict(rollout), "lora": asdict(lora)})
        self.automatic_optimization = False
        for name, value in (("task_pool", task_pool), ("episodes_per_update", episodes_per_update), ("updates", updates),
                            ("micro_batch_size", 1 if micro_batch_size is None else micro_batch_size),
                            ("ratio_epochs", ratio_epochs), ("ratio_minibatches", ratio_minibatches)):
            if value < 1:
                raise FinetuneError(f"model.{name} must be at least 1, got {value}.")
        if objective not in OBJECTIVES:
            raise FinetuneError(f"model.objective {objective!r} is unknown; choose one of: {', '.join(sorted(OBJECTIVES))}.")
        self.objective = get_objective(objective)
        self.objective_options = dict(objective_options or {})
        try:
            self.objective.check_options(self.objective_options)
        except ValueError as error:
            raise FinetuneError(f"model.objective_options: {error}") from None
        self.needs: Needs = self.objective.needs(self.objective_options)
        self._check_sampling(rollout, episodes_per_update, kl_target)
        if gradient_snr and (micro_batch_size is None or self.objective.prepare is not None):
            raise FinetuneError("model.gradient_snr is estimated from micro-batches: set model.micro_batch_size (smaller than "
                                "the batch) and use a one-step objective (ReMax, RLOO, PM-RLHF, KL-RLHF).")
        self.rollout_config = rollout
        self.env_names = [env] if isinstance(env, str) else list(env)
        if not self.env_names:
            raise FinetuneError("model.env is empty; name at least one environment, e.g. textworld/coin-easy.")
        self.env_options = dict(env_options or {})
        for name in self.env_names:  # a bad environment name or option fails here, before any work
            self.make_env(name).close()

        self.base_info = read_training_info(pretrained, purpose="model.pretrained of `bwarea finetune`")
        # a converted LM (the AR baseline's start) and the released BWArea come with a trained policy
        trained_conversion = self.base_info["stage"] == "converted" and self.base_info.get("variant") in ("ar", "released")
        if self.base_info["stage"] not in STARTING_STAGES and not trained_conversion:
            raise FinetuneError(
                f"model.pretrained {pretrained} is the export of stage {self.base_info['stage']!r}; fine-tuning starts from a "
                "stage-2 BWArea export (bwarea pretrain with training.pretrain.PolicyStage), an AR baseline export, a "
                "language model converted with `bwarea convert hf --variant ar`, the converted BWArea release, or an earlier "
                "fine-tune — the cognitive policy of a stage-1 or freshly converted BWArea is untrained.")
        self.policy_model = bwarea.load_pretrained(pretrained)
        self.tokenizer = bwarea.load_tokenizer(pretrained)
        self._check_trainable(trainable or ["policy"])
        if self.needs.value_model and tuning == "lora":
            raise FinetuneError(f"model.tuning lora is not supported with {objective} (its value model copies the policy "
                                "trunk); use tuning: full or head, or another objective.")
        try:
            self.trainable = prepare_tuning(self.policy_model, "policy", tuning, lora)
        except ValueError as error:
            raise FinetuneError(f"model.tuning: {error}") from None
        self.reference = ReferencePolicy(self.policy_model, self.trainable)
        self.value_model = (ScalarModel.from_trunk(self._policy_trunk(), self.policy_model.config)
                            if self.needs.value_model else None)
        scorer = None
        if reward_model is not None:
            reward_network = bwarea.load_pretrained(reward_model)
            if not isinstance(reward_network, ScalarModel):
                raise FinetuneError(f"model.reward_model {reward_model} is not a reward model export (model_type bwarea-scalar); "
                                    "train one with training.reward_model.train_reward_model.")
            rm_scorer = RewardScorer(reward_network.requires_grad_(False), bwarea.load_tokenizer(reward_model))
            scorer = lambda transcripts, commands: rm_scorer(transcripts, [""] * len(transcripts)).tolist()  # noqa: E731
        self.engine = RolloutEngine(self.policy_model, self.tokenizer, rollout, self.reference, scorer)
        # a sharded run's rollout replica (configure_model); set through __dict__ so that it stays out of the module
        # tree: neither sharded, nor moved by Lightning, nor saved in checkpoints
        self.__dict__["replica"] = None
        self.completed_updates = 0
        self.signal_free_updates = 0
        self.bad_batches = 0
        self.skipped_batches = 0
        self.dropped_episodes = 0

    # --- set-up -------------------------------------------------------------------------------
    def _check_sampling(self, rollout: RolloutConfig, episodes_per_update: int, kl_target: float | None) -> None:
        name = self.objective.name
        if rollout.temperature <= 0:
            raise FinetuneError(f"model.rollout.temperature must be positive for fine-tuning (got {rollout.temperature}): "
                                "the objectives need sampled actions; log-probabilities are taken at that temperature.")
        if rollout.group_size < self.needs.min_group_size:
            raise FinetuneError(f"objective {name} compares samples of the same task: set model.rollout.group_size to at "
                                f"least {self.needs.min_group_size} (got {rollout.group_size}).")
        if episodes_per_update % rollout.group_size:
            raise FinetuneError(f"model.episodes_per_update ({episodes_per_update}) must be a multiple of "
                                f"model.rollout.group_size ({rollout.group_size}): it counts sampled episodes.")
        if kl_target is not None:
            option = self.objective.kl_option
            if option is None:
                raise FinetuneError(f"model.kl_target adapts a KL coefficient, and objective {name} has none; "
                                    "drop kl_target or choose an objective with a KL term.")
            if kl_target <= 0 or not self.objective_options.get(option, 0):
                raise FinetuneError(f"model.kl_target needs a positive target and a positive starting "
                                    f"objective_options.{option} (got {kl_target} and "
                                    f"{self.objective_options.get(option, 0)}).")

    def configure_model(self) -> None:
        """Under ModelParallelStrategy (FSDP2): shard the policy and PPO's value model over the processes, and play
        through a rollout replica whose policy is whole (training/sharding.py). Other strategies keep the model whole."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, ModelParallelStrategy) or self.replica is not None:
            return
        hp = self.hparams
        if hp.tuning != "full" or hp.optimizer != "adamw" or hp.gradient_snr:
            raise FinetuneError("sharded fine-tuning (ModelParallelStrategy) trains the whole policy with AdamW: set "
                                "model.tuning full, model.optimizer adamw and model.gradient_snr false, or use DDP.")
        if strategy.device_mesh["tensor_parallel"].size() != 1:
            raise FinetuneError("fine-tuning shards the policy over data-parallel processes only: set the strategy's "
                                "tensor_parallel_size: 1 and data_parallel_size to the number of processes.")
        mesh = strategy.device_mesh["data_parallel"]
        policy = self.policy_model.policy_module()
        replica = rollout_replica(self.policy_model, policy)
        self.__dict__["replica"] = replica
        self.reference = ReferencePolicy(replica)
        shard(policy, mesh)
        if self.value_model is not None:
            shard(self.value_model, mesh)
        self.trainable = list(policy.parameters())      # the sharded parameters the optimizer steps
        self.engine = RolloutEngine(self.policy_model, self.tokenizer, self.rollout_config, self.reference,
                                    self.engine.reward_function, player=replica)

    def _refresh_replica(self) -> None:
        """The rollout replica's policy := the sharded policy's current weights (every process, together)."""
        replica = self.replica
        if next(replica.policy_module().parameters()).device != self.device:
            replica.to(self.device)
        copy_whole_weights(self.policy_model.policy_module(), replica.policy_module())

    def _check_trainable(self, trainable: list[str]) -> None:
        unknown = sorted(set(trainable) - set(TRAINABLE_PARTS))
        if unknown:
            raise FinetuneError(f"model.trainable part(s) {unknown} unknown; choose from {list(TRAINABLE_PARTS)}.")
        if set(trainable) != {"policy"}:
            frozen = sorted(set(trainable) - {"policy"})
            raise FinetuneError(f"model.trainable={trainable} asks to train {frozen}, but reward fine-tuning trains only the "
                                "cognitive policy (world model, inverse dynamics and codebook stay frozen); use trainable: [policy].")

    def _policy_trunk(self):
        """The trunk PPO's value model starts from: what the policy reads the text with."""
        return self.policy_model.get_submodule(VALUE_TRUNKS[self.policy_model.config.model_type])

    def make_env(self, name: str):
        """A training environment: games and items from the family's training split (TextWorld, BIG-Bench Hard),
        or worlds by seed for a family without splits (Crafter)."""
        split = envs.family(name).training_split
        return envs.make(name, **(self.env_options if split is None else {**self.env_options, "split": split}))

    def play(self, tasks: list[int], greedy: bool, sampling_seeds: list[int] | None = None) -> list[Episode]:
        """One episode per task of the pool (task k = index k // len(envs) of environment k % len(envs));
        sampling_seeds: one per task (see RolloutEngine.run)."""
        episodes: dict[int, Episode] = {}
        count = len(self.env_names)
        for env_index, name in enumerate(self.env_names):
            positions = [p for p, task in enumerate(tasks) if task % count == env_index]
            if positions:
                seeds = None if sampling_seeds is None else [sampling_seeds[p] for p in positions]
                played = self.engine.run(lambda: self.make_env(name), [tasks[p] // count for p in positions],
                                         greedy=greedy, sampling_seeds=seeds)
                episodes.update(zip(positions, played))
        return [episodes[p] for p in range(len(tasks))]

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam_mini":
            groups = adam_mini_param_groups(self.policy_model, self.trainable, weight_decay=hp.weight_decay, lr=hp.learning_rate)
            if self.value_model is not None:
                groups += adam_mini_param_groups(self.value_model, weight_decay=hp.weight_decay, lr=hp.value_learning_rate)
            return AdamMini(groups)
        groups = [{"params": self.trainable, "lr": hp.learning_rate}]
        if self.value_model is not None:
            groups.append({"params": list(self.value_model.parameters()), "lr": hp.value_learning_rate})
        return torch.optim.AdamW(groups, weight_decay=hp.weight_decay)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Updates(self), batch_size=None)

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["finetune_state"] = {"completed_updates": self.completed_updates, "skipped_batches": self.skipped_batches,
                                        "dropped_episodes": self.dropped_episodes, "bad_batches": self.bad_batches,
                                        "signal_free_updates": self.signal_free_updates,
                                        "objective_options": dict(self.objective_options)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("finetune_state")
        if state is None:
            raise FinetuneError("this checkpoint was not written by `bwarea finetune` (no finetune_state); "
                                "start from an export directory with --model.pretrained instead.")
        self.completed_updates = state["completed_updates"]
        self.skipped_batches = state["skipped_batches"]
        self.dropped_episodes = state["dropped_episodes"]
        self.bad_batches = state["bad_batches"]
        self.signal_free_updates = state["signal_free_updates"]
        option = self.objective.kl_option
        if self.hparams.kl_target is not None and option in state.get("objective_options", {}):
            self.objective_options[option] = state["objective_options"][option]  # the adapted coefficient, as it was

    # --- processes (Lightning DDP): each plays its share of the rollout batch -----------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1  # 1 outside a Trainer (tests, notebooks)

    def sum_over_processes(self, *values: float) -> list[float]:
        """Each value summed over all training processes (the values themselves in a single process)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        totals = self.trainer.strategy.reduce(torch.tensor(values, dtype=torch.float64, device=self.device), reduce_op="sum")
        return totals.tolist()

    def any_process(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any: a decision all of them must take together."""
        return self.sum_over_processes(float(flag))[0] > 0

    def setup(self, stage: str) -> None:
        if self.hparams.episodes_per_update % (self.world_size * self.rollout_config.group_size):
            raise FinetuneError(f"model.episodes_per_update ({self.hparams.episodes_per_update}) must be a multiple of the "
                                f"{self.world_size} training processes x rollout.group_size "
                                f"({self.rollout_config.group_size}), so that each process plays whole groups, an equal share.")
        if str(self.trainer.precision) in ("16-mixed", "16-true"):
            raise FinetuneError("trainer.precision 16 is not supported by fine-tuning (its gradient scaler would need "
                                "Lightning to take every optimizer step); use auto, bf16-mixed or 32-true.")

    def training_step(self, update: int, batch_idx: int) -> None:
        hp = self.hparams
        started = time.perf_counter()
        tokens_before = self.engine.generated_tokens
        group = self.rollout_config.group_size
        tasks = task_seeds(update, hp.episodes_per_update // group, hp.task_pool * len(self.env_names), hp.seed)
        # this process's share: task positions rank, rank + W, ..., each with its whole group; a sample's actions depend
        # on (seed, update, position, member) only, so the batch is the same however many processes play it
        positions = list(range(self.global_rank, len(tasks), self.world_size))
        members = [(p, k) for p in positions for k in range(group)]
        if self.replica is not None:
            self._refresh_replica()
        sampled = self.play([tasks[p] for p, _ in members], greedy=False,
                            sampling_seeds=[(hp.seed * 1_000_003 + update) * 4099 + p * group + k for p, k in members])
        greedy = self.play([tasks[p] for p in positions], greedy=True) if self.needs.greedy_twin else None
        greedy_of_sample = None if greedy is None else [greedy[i // group] for i in range(len(sampled))]
        dropped_before = self.dropped_episodes
        kept, twins, group_ids = self._usable(sampled, greedy_of_sample, [p for p, _ in members])
        metrics = self._episode_metrics(sampled, greedy, self.dropped_episodes - dropped_before)
        metrics.update(self._pair_metrics(kept, twins, group_ids))
        kept_total, processes_without = (int(x) for x in self.sum_over_processes(len(kept), float(not kept)))
        if kept_total == 0:
            self._skip("no usable episode in this rollout batch (all dropped)")
        elif processes_without:
            self._skip(f"{processes_without} of {self.world_size} processes kept none of their episodes")
        elif self.objective.prepare is not None and self.any_process(len(kept) * self.world_size != kept_total):
            self._skip("dropped episodes left the processes unequal shares, and the minibatch steps must match")
        else:
            update_metrics = (self._ratio_update(kept, group_ids, update) if self.objective.prepare is not None
                              else self._one_step_update(kept, twins, group_ids, kept_total))
            metrics.update(self._mean_over_processes(update_metrics))
            self._adapt_kl_coefficient(metrics)
        self._count_update()
        elapsed = time.perf_counter() - started
        generated = self.sum_over_processes(self.engine.generated_tokens - tokens_before)[0]
        metrics.update({"tokens_per_second": generated / max(elapsed, 1e-9),
                        "seconds_per_update": elapsed, "peak_memory_mb": peak_memory_mb(),
                        **({"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
                           if self.device.type == "cuda" else {}),
                        "batches/skipped_total": float(self.skipped_batches),
                        "batches/signal_free_total": float(self.signal_free_updates)})
        self.completed_updates = update + 1
        self.log_dict({f"finetune/{k}": v for k, v in metrics.items()}, on_step=True, batch_size=hp.episodes_per_update)
        self.log("reward", metrics["reward/sampled"], prog_bar=True, on_step=True, logger=False,
                 batch_size=hp.episodes_per_update)

    def _episode_metrics(self, sampled: list[Episode], greedy: list[Episode] | None, dropped: int) -> dict[str, float]:
        """Rewards, success and lengths over the whole rollout batch (all processes), and the dropped-episode count."""
        def sums(episodes: list[Episode]) -> list[float]:
            kept = [e for e in episodes if not e.dropped]
            return [sum(e.total_reward for e in kept), sum(e.won for e in kept), len(kept),
                    sum(len(e.turns) for e in kept), sum(e.num_tokens for e in kept)]

        local = sums(sampled) + (sums(greedy) if greedy is not None else [0.0] * 5) + [dropped]
        reward, wins, count, turns, tokens, greedy_reward, _, greedy_count, _, _, dropped_total = self.sum_over_processes(*local)
        self.dropped_episodes += int(dropped_total) - dropped  # every process counts the whole batch's drops
        count = max(count, 1)
        metrics = {"reward/sampled": reward / count, "success_rate": wins / count, "episode_turns": turns / count,
                   "episode_tokens": tokens / count, "episodes/dropped_total": float(self.dropped_episodes)}
        if greedy is not None:
            metrics["reward/greedy"] = greedy_reward / max(greedy_count, 1)
        return metrics

    def _pair_metrics(self, kept: list[Episode], twins: list[Episode] | None, group_ids: list[int]) -> dict[str, float]:
        """Over the batch: the sampled episodes' win and tie rates against their greedy twin, the share of groups
        whose samples all scored the same (no signal for a group baseline), and the PM divergence
        E[(delta R / beta - delta log pi)^2] over pairs (two samples of a group, else a sample and its greedy twin;
        log pi of a whole episode; beta = the objective's beta, 1 when it has none)."""
        beta = float(self.objective_options.get("beta", 1.0))

        def log_pi(episode: Episode) -> float:
            return sum(sum(turn.log_probs) for turn in episode.turns)

        pairs: list[tuple[Episode, Episode]] = []
        groups: dict[int, list[Episode]] = {}
        for episode, group in zip(kept, group_ids):
            groups.setdefault(group, []).append(episode)
        for members in groups.values():
            pairs.extend(itertools.combinations(members, 2))
        if not pairs and twins is not None:
            pairs = list(zip(kept, twins))
        divergence = sum(((a.total_reward - b.total_reward) / beta - (log_pi(a) - log_pi(b))) ** 2 for a, b in pairs)
        wins = sum(e.total_reward > t.total_reward for e, t in zip(kept, twins or []))
        ties = sum(e.total_reward == t.total_reward for e, t in zip(kept, twins or []))
        multi = [members for members in groups.values() if len(members) > 1]
        constant = sum(len({e.total_reward for e in members}) == 1 for members in multi)
        wins, ties, twinned, constant, multi_count, divergence, pair_count = self.sum_over_processes(
            wins, ties, len(twins or []), constant, len(multi), divergence, len(pairs))
        metrics = {}
        if twinned:
            metrics.update({"win_rate_vs_greedy": wins / twinned, "tie_rate_vs_greedy": ties / twinned})
        if multi_count:
            metrics["constant_group_share"] = constant / multi_count
        if pair_count:
            metrics["pm_divergence"] = divergence / pair_count
        return metrics

    def _mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        """The update's metrics averaged over processes (each computed them on its share)."""
        if self.world_size == 1 or not metrics:
            return metrics
        names = sorted(metrics)
        totals = self.sum_over_processes(*(metrics[name] for name in names))
        return {name: total / self.world_size for name, total in zip(names, totals)}

    def _usable(self, sampled: list[Episode], twins: list[Episode] | None, groups: list[int]
                ) -> tuple[list[Episode], list[Episode] | None, list[int]]:
        """Episodes to learn from, with their greedy twins and group ids: a sample is kept when it and (if there is
        one) its greedy twin survived."""
        self.dropped_episodes += sum(e.dropped for e in sampled) + len({id(t) for t in twins or [] if t.dropped})
        rows = [i for i, e in enumerate(sampled) if not e.dropped and (twins is None or not twins[i].dropped)]
        return ([sampled[i] for i in rows], None if twins is None else [twins[i] for i in rows], [groups[i] for i in rows])

    def _skip(self, reason: str) -> None:
        self.skipped_batches += 1
        self.bad_batches += 1
        if self.bad_batches > self.hparams.max_bad_batches:
            raise FinetuneStopped(f"stopping fine-tuning: {self.bad_batches} consecutive updates were skipped (last: {reason}); "
                                  "check the rewards, the learning rate and the environment, then resume from the last checkpoint.")

    # --- optimizer steps ---------------------------------------------------------------------------
    def _parameter_sets(self) -> list[list[torch.nn.Parameter]]:
        """The policy's trainable weights and (PPO) the value model's: their gradients are clipped separately."""
        return [self.trainable] + ([list(self.value_model.parameters())] if self.value_model is not None else [])

    def _optimizer_step(self, loss: torch.Tensor, backward: Callable[[], None] | None = None) -> dict[str, float]:
        """Backward (`backward`, or through `loss` directly), clip each parameter set, step the torch optimizer.

        Returns the gradient norm(s) before clipping; nothing is stepped when the loss or a gradient is not finite
        (a skipped update) or when the gradient is exactly zero (no learning signal: an Adam step would still move
        the weights along its momentum)."""
        if self.any_process(not bool(torch.isfinite(loss))):
            self._skip(f"loss is {float(loss.detach())} (on at least one process)")
            return {}
        optimizer = self.optimizers().optimizer
        optimizer.zero_grad()
        if backward is None:
            self.manual_backward(loss)
        else:
            backward()
        limit = self.hparams.max_grad_norm or math.inf
        norms = [whole(torch.nn.utils.clip_grad_norm_(parameters, limit)) for parameters in self._parameter_sets()]
        metrics = {"grad_norm": float(norms[0])} | ({"value_grad_norm": float(norms[1])} if len(norms) > 1 else {})
        if not all(torch.isfinite(norm) for norm in norms):
            optimizer.zero_grad()
            self._skip(f"gradient norm is {[float(n) for n in norms]}")
            return metrics
        self.bad_batches = 0
        if all(norm == 0 for norm in norms):
            self.signal_free_updates += 1
            return metrics
        optimizer.step()
        return metrics

    def _count_update(self) -> None:
        """Advance Lightning's step once per update, whatever the optimizer did: a step of the Lightning optimizer
        with no gradients moves nothing (torch optimizers skip parameters without a gradient), so checkpoints
        (run.checkpoint_every_n_steps) and logged steps count updates, and an update without signal is saved too."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()

    def _adapt_kl_coefficient(self, metrics: dict[str, float]) -> None:
        """The proportional KL controller of `kl_target` (class docstring); logs the coefficient in use."""
        option, target = self.objective.kl_option, self.hparams.kl_target
        if target is None or "kl_to_reference" not in metrics:
            return
        error = max(-0.2, min(0.2, metrics["kl_to_reference"] / target - 1))
        self.objective_options[option] = float(self.objective_options[option]) * (1 + error * self.hparams.kl_adapt_rate)
        metrics["kl_coefficient"] = self.objective_options[option]

    # --- one update ----------------------------------------------------------------------------
    def _rollout_batch(self, episodes: list[Episode], scores: tuple[torch.Tensor, ...], twins: list[Episode] | None,
                       group_ids: list[int]) -> RolloutBatch:
        full = self.needs.full_distributions
        return build_rollout_batch(episodes, scores[0], scores[1], None if twins is None else [t.total_reward for t in twins],
                                   group_ids, scores[2] if full else None,
                                   self.engine.reference_log_distributions(episodes) if full else None)

    def _one_step_update(self, episodes: list[Episode], twins: list[Episode] | None, group_ids: list[int],
                         kept_total: int) -> dict[str, float]:
        """One step on the loss over all processes' kept episodes: each process's loss (a mean over its episodes) is
        weighted by its share, W n_local / n_total, so that DDP's average of the gradients is the whole batch's."""
        micro = self.hparams.micro_batch_size
        in_micro_batches = micro is not None and micro < len(episodes)
        full = self.needs.full_distributions
        with torch.set_grad_enabled(not in_micro_batches):
            scores = self.engine.policy_log_probs(episodes, full=full)
        if in_micro_batches:  # leaves: the loss is taken once, its gradient w.r.t. them pushed through the policy later
            for score in scores:
                score.requires_grad_(True)
        batch = self._rollout_batch(episodes, scores, twins, group_ids)
        if self.any_process(batch.baseline_returns is not None and not bool(torch.isfinite(batch.baseline_returns).all())):
            self._skip("non-finite greedy rewards")
            return {}
        if self.any_process(not bool(torch.isfinite(batch.token_rewards).all())):
            self._skip("non-finite rewards")
            return {}
        loss, metrics = self.objective.compute_loss(batch, self.objective_options)
        share = self.world_size * len(episodes) / kept_total
        weighted = loss * share if share != 1 else loss
        snr: list[float] = []
        backward = self._micro_batch_backward(weighted, episodes, scores, micro, full, snr) if in_micro_batches else None
        metrics.update(self._optimizer_step(weighted, backward))
        if snr:
            metrics["gradient_snr"] = snr[0]
        return {**metrics, "loss": float(loss.detach())}

    def _micro_batch_backward(self, loss: torch.Tensor, episodes: list[Episode], scores: tuple[torch.Tensor, ...],
                              size: int, full: bool, snr: list[float]) -> Callable[[], None]:
        """Backward through the policy `size` episodes at a time, so only one micro-batch's activations are alive.

        By the chain rule dL/dθ = Σ_{b,t} (∂L/∂log π_bt) ∂log π_bt/∂θ + (∂L/∂H_bt) ∂H_bt/∂θ (+ the same for the whole
        log-distribution when the objective reads it), and the coefficients ∂L/∂(...) come from the loss on the
        detached full batch; each micro-batch then backpropagates Σ coefficient × (recomputed value), which sums to
        the full-batch gradient for any objective.

        With model.gradient_snr, micro-batch j's gradient g_j (n_j episodes of n) gives the estimate x_j = (n / n_j) g_j
        of the batch gradient G = sum_j g_j; snr receives |G|^2 / (s^2 / m), s^2 the sample variance of the m x_j."""
        def flat_gradient() -> torch.Tensor:
            return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in self.trainable])

        def backward() -> None:
            coefficients = torch.autograd.grad(loss, list(scores), allow_unused=True)
            estimates, previous = [], None
            for start in range(0, len(episodes), size):
                rows = slice(start, start + size)
                recomputed = self.engine.policy_log_probs(episodes[rows], full=full)
                width = recomputed[0].shape[1]
                terms = [(coefficient[rows, :width] * value).sum()
                         for coefficient, value in zip(coefficients, recomputed) if coefficient is not None]
                if terms:
                    self.manual_backward(torch.stack(terms).sum())
                if self.hparams.gradient_snr:
                    current = flat_gradient()
                    increment = current if previous is None else current - previous
                    estimates.append(increment * len(episodes) / len(episodes[rows]))
                    previous = current
            if len(estimates) > 1:
                stacked = torch.stack(estimates)
                variance = float((stacked - stacked.mean(0)).square().sum(-1).sum() / (len(estimates) - 1))
                snr.append(float(previous.square().sum()) / max(variance / len(estimates), 1e-30))
        return backward

    def _ratio_update(self, episodes: list[Episode], group_ids: list[int], update: int) -> dict[str, float]:
        """The clipped-ratio objectives: advantages once from the whole batch under the sampling policy (the
        objective's `prepare`), then ratio_epochs epochs of ratio_minibatches minibatches, reshuffled every epoch;
        the metrics are means over all minibatches taken."""
        hp = self.hparams
        width = max(e.num_tokens for e in episodes)
        placeholder = torch.zeros(len(episodes), width, device=self.device)
        whole = build_rollout_batch(episodes, placeholder, group_ids=group_ids)
        if self.value_model is not None:
            with torch.no_grad():
                whole.old_values = self.engine.values(self.value_model, episodes)
        prepared = self.objective.prepare_batch(whole, self.objective_options)
        if self.any_process(not bool(torch.isfinite(prepared.advantages).all())):
            self._skip("non-finite advantages")
            return {}
        totals: dict[str, float] = {}
        steps = 0
        minibatches = max(1, min(hp.ratio_minibatches, len(episodes)))
        for epoch in range(hp.ratio_epochs):
            order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(
                (hp.seed * 1_000_003 + update) * 101 + epoch))
            for rows in order.chunk(minibatches):
                chosen = [episodes[i] for i in rows.tolist()]
                log_probs, entropy = self.engine.policy_log_probs(chosen)
                batch = build_rollout_batch(chosen, log_probs, entropy, group_ids=[group_ids[i] for i in rows.tolist()])
                width = batch.mask.shape[1]
                batch.advantages = prepared.advantages[rows][:, :width]
                if prepared.returns is not None:
                    batch.returns = prepared.returns[rows][:, :width]
                if self.value_model is not None:
                    batch.values = self.engine.values(self.value_model, chosen)
                    batch.old_values = prepared.old_values[rows][:, :width]
                loss, metrics = self.objective.compute_loss(batch, self.objective_options)
                metrics.update(self._optimizer_step(loss))
                steps += 1
                for name, value in metrics.items():
                    totals[name] = totals.get(name, 0.0) + value
                if hp.ratio_target_kl is not None and self.any_process(metrics["approx_kl_old"] > 1.5 * hp.ratio_target_kl):
                    return self._minibatch_means(totals, steps, stopped_early=True, advantages=prepared)
        return self._minibatch_means(totals, steps, stopped_early=False, advantages=prepared)

    @staticmethod
    def _minibatch_means(totals: dict[str, float], steps: int, stopped_early: bool, advantages: RolloutBatch) -> dict[str, float]:
        return {**{name: value / steps for name, value in totals.items()}, "minibatch_steps": float(steps),
                "stopped_early": float(stopped_early),
                "advantage_abs_mean": float(advantages.advantages[advantages.mask].abs().mean())}

    # --- export (training.runs.ExportOnTrainEnd) --------------------------------------------
    def export_pretrained(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """save_pretrained of the fine-tuned model (frozen parts included, LoRA adapters merged into a copy) with its
        tokenizer. Under DDP every process holds the same weights, the module's own; a sharded run's are gathered in
        `state_dict` (on the main process), which the rollout replica takes on to be saved whole."""
        model = self.policy_model
        if self.replica is not None:
            prefix = "policy_model."
            self.replica.load_state_dict({name[len(prefix):]: value for name, value in state_dict.items()
                                          if name.startswith(prefix)})
            model = self.replica
        if has_lora(model):
            model = copy.deepcopy(model)
            merge_lora(model)
        model.save_pretrained(directory, tokenizer=self.tokenizer)

    def training_info(self) -> dict[str, Any]:
        hp = self.hparams
        return {"stage": "finetune", "model_type": self.policy_model.config.model_type, "pretrained": hp.pretrained,
                "base_stage": self.base_info["stage"], "env": hp.env, "objective": hp.objective,
                "objective_options": self.objective_options, "updates": self.completed_updates,
                "episodes_per_update": hp.episodes_per_update, "task_pool": hp.task_pool,
                "skipped_batches": self.skipped_batches, "dropped_episodes": self.dropped_episodes,
                "tuning": hp.tuning, "trained_parameters": sum(p.numel() for p in self.trainable),
                "sharded_over_processes": self.world_size if self.replica is not None else 1,
                "trained_parameters_per_process": local_elements(self.trainable)}


def locals_without_self(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("self", "__class__")}


class FinetuneCLI(RunCLI):
    prog = "bwarea finetune"
    description = __doc__.split("\n\n")[0]
    model_class = FinetuneModule
    # Lightning's step counts updates (FinetuneModule._count_update), so model.updates is trainer.max_steps: a run
    # resumed with more updates than it finished goes on from where it stopped (each epoch plays the updates still to run)
    trainer_defaults = {"max_epochs": -1, "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_model_summary": False,
                        "precision": "auto"}

    ignored_warnings = RunCLI.ignored_warnings + (
        # sharded PPO: the value model returns a squeezed (view) output, which no code modifies in place
        r"FSDP2-wrapped module \(FSDPScalarModel\) returned a view tensor",
    )

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.updates", "trainer.max_steps")


def run(args: list[str] | dict[str, Any] | None = None, exit_on_error: bool = False) -> Path:
    """Run `bwarea finetune` in this process; returns the run directory (the fine-tuned model is run_dir / "export")."""
    return run_cli(FinetuneCLI, args, exit_on_error)
