"""Reward fine-tuning of the cognitive policy (BWArea) or of the whole AR baseline, with Lightning.

    bwarea finetune --config configs/finetune/textworld-remax.yaml
    bwarea finetune --config configs/finetune/textworld-remax.yaml --ckpt_path last      # resume

One update = one batch of rollouts and one optimizer step (ReMax, PM-RLHF, KL-RLHF), or a few
epochs of minibatch steps (PPO). For BWArea only the cognitive policy is trained; the world model,
inverse dynamics and codebook stay frozen. The same code fine-tunes the AR baseline (tokens are its
actions, all weights train), which is the comparison every report shows.

Exact resume: the tasks of update u and the sampling generator are pure functions of (seed, u), and
u is stored in the checkpoint with the weights and optimizer state.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

import bwarea
import envs
from bwarea import ScalarModel
from bwarea.adaptation import prepare_tuning
from bwarea.lora import LoraSettings, has_lora, merge_lora
from training.objectives import OBJECTIVES, gae, get_objective, whiten
from training.reward_model import RewardScorer
from training.rollout import Episode, ReferencePolicy, RolloutConfig, RolloutEngine, build_rollout_batch
from training.runs import RunCLI, UserError, cli_main, peak_memory_mb, read_training_info, run_cli

TRAINABLE_PARTS = ("policy", "world", "inverse", "codebook")
# model_type -> the token trunk PPO's value model copies (CoLA's policy reads the frozen LM's states)
VALUE_TRUNKS = {"bwarea": "policy.trunk", "bwarea-cola": "lm", "bwarea-ar": "trunk"}
GREEDY_BASELINE_OBJECTIVES = ("remax", "pm_rlhf", "conditional_pm_rlhf", "kl_rlhf")


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
        episodes_per_update: sampled episodes per update (ReMax also plays one greedy episode per task).
        updates: number of updates (rollout batches) to run.
        objective: "remax", "pm_rlhf", "conditional_pm_rlhf", "kl_rlhf" or "ppo".
        objective_options: keyword arguments of the objective (e.g. beta, kl_coef, advantage_clip).
        rollout: how episodes are played (horizon, tokens per turn, temperature, prompt format).
        learning_rate / weight_decay / max_grad_norm: AdamW settings and gradient clipping of the policy.
        trainable: parts to train; BWArea fine-tuning trains only "policy" (anything else is refused).
        tuning: how the policy trains: "full" (BWArea: the whole cognitive policy; AR: every weight), "head"
            (BWArea/CoLA: only the K-way action head, the trunk stays as pretrained) or "lora" (LoRA adapters on the
            policy trunk plus the head for BWArea, on the trunk for AR; merged into the export).
        lora: LoRA rank, alpha, dropout and target layers (tuning: lora).
        reward_model: optional directory of a ScalarModel export; its score of each episode's transcript
            replaces the environment reward.
        max_bad_batches: consecutive skipped updates (non-finite loss/advantages, no usable episode)
            tolerated before the run stops with an error.
        micro_batch_size: episodes per backward pass of ReMax / PM-RLHF / KL-RLHF (None: the whole batch in one
            pass). Smaller bounds the activation memory at the cost of one extra gradient-free forward pass;
            the gradient is the same up to float rounding. PPO splits its batch with ppo_minibatches instead.
        ppo_epochs / ppo_minibatches / value_learning_rate / gae_gamma / gae_lambda: PPO settings.
        seed: seeds task order and sampling.
    """

    def __init__(self, pretrained: str, env: str | list[str] = "textworld/coin-easy", env_options: dict[str, Any] | None = None,
                 task_pool: int = 64, episodes_per_update: int = 8, updates: int = 50, objective: str = "remax",
                 objective_options: dict[str, Any] | None = None, rollout: RolloutConfig = RolloutConfig(),
                 learning_rate: float = 3e-5, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                 trainable: list[str] | None = None, tuning: Literal["full", "head", "lora"] = "full",
                 lora: LoraSettings = LoraSettings(), reward_model: str | None = None, max_bad_batches: int = 3,
                 micro_batch_size: int | None = None, ppo_epochs: int = 4, ppo_minibatches: int = 2,
                 value_learning_rate: float = 1e-4, gae_gamma: float = 1.0, gae_lambda: float = 0.95, seed: int = 0):
        super().__init__()
        self.save_hyperparameters({**locals_without_self(locals()), "rollout": asdict(rollout), "lora": asdict(lora)})
        self.automatic_optimization = False
        for name, value in (("task_pool", task_pool), ("episodes_per_update", episodes_per_update), ("updates", updates),
                            ("micro_batch_size", 1 if micro_batch_size is None else micro_batch_size)):
            if value < 1:
                raise FinetuneError(f"model.{name} must be at least 1, got {value}.")
        if objective not in OBJECTIVES:
            raise FinetuneError(f"model.objective {objective!r} is unknown; choose one of: {', '.join(sorted(OBJECTIVES))}.")
        self.objective = get_objective(objective)
        self.objective_options = dict(objective_options or {})
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
        if objective == "ppo" and tuning == "lora":
            raise FinetuneError("model.tuning lora is not supported with PPO (its value model copies the policy trunk); "
                                "use tuning: full or head, or another objective.")
        try:
            self.trainable = prepare_tuning(self.policy_model, "policy", tuning, lora)
        except ValueError as error:
            raise FinetuneError(f"model.tuning: {error}") from None
        self.reference = ReferencePolicy(self.policy_model, self.trainable)
        self.value_model = ScalarModel.from_trunk(self._policy_trunk(), self.policy_model.config) if objective == "ppo" else None
        scorer = None
        if reward_model is not None:
            reward_network = bwarea.load_pretrained(reward_model)
            if not isinstance(reward_network, ScalarModel):
                raise FinetuneError(f"model.reward_model {reward_model} is not a reward model export (model_type bwarea-scalar); "
                                    "train one with training.reward_model.train_reward_model.")
            rm_scorer = RewardScorer(reward_network.requires_grad_(False), bwarea.load_tokenizer(reward_model))
            scorer = lambda transcripts, commands: rm_scorer(transcripts, [""] * len(transcripts)).tolist()  # noqa: E731
        self.engine = RolloutEngine(self.policy_model, self.tokenizer, rollout, self.reference, scorer)
        self.completed_updates = 0
        self.signal_free_updates = 0
        self.bad_batches = 0
        self.skipped_batches = 0
        self.dropped_episodes = 0

    # --- set-up -------------------------------------------------------------------------------
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
        """A training environment: TextWorld games and BIG-Bench Hard items from their training split,
        Crafter worlds by seed."""
        options = self.env_options if name == "crafter" else {**self.env_options, "split": "train"}
        return envs.make(name, **options)

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
        groups = [{"params": self.trainable, "lr": self.hparams.learning_rate}]
        if self.value_model is not None:
            groups.append({"params": list(self.value_model.parameters()), "lr": self.hparams.value_learning_rate})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Updates(self), batch_size=None)

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["finetune_state"] = {"completed_updates": self.completed_updates, "skipped_batches": self.skipped_batches,
                                        "dropped_episodes": self.dropped_episodes, "bad_batches": self.bad_batches,
                                        "signal_free_updates": self.signal_free_updates}

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

    # --- one update -----------------------------------------------------------------------------
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
        if self.hparams.episodes_per_update % self.world_size:
            raise FinetuneError(f"model.episodes_per_update ({self.hparams.episodes_per_update}) must be a multiple of the "
                                f"{self.world_size} training processes, so that each plays an equal share of the batch.")

    def training_step(self, update: int, batch_idx: int) -> None:
        hp = self.hparams
        started = time.perf_counter()
        tokens_before = self.engine.generated_tokens
        tasks = task_seeds(update, hp.episodes_per_update, hp.task_pool * len(self.env_names), hp.seed)
        # this process's share: positions rank, rank + W, ...; an episode's samples depend on (seed, update, position)
        # only, so the batch is the same however many processes play it
        positions = range(self.global_rank, len(tasks), self.world_size)
        tasks = [tasks[p] for p in positions]
        sampled = self.play(tasks, greedy=False,
                            sampling_seeds=[(hp.seed * 1_000_003 + update) * 4099 + p for p in positions])
        greedy = None
        if hp.objective in GREEDY_BASELINE_OBJECTIVES and self.objective_options.get("baseline", "greedy") == "greedy":
            greedy = self.play(tasks, greedy=True)
        dropped_before = self.dropped_episodes
        kept, baselines = self._usable(sampled, greedy)
        metrics = self._episode_metrics(sampled, greedy, self.dropped_episodes - dropped_before)
        kept_total, processes_without = (int(x) for x in self.sum_over_processes(len(kept), float(not kept)))
        if kept_total == 0:
            self._skip("no usable episode in this rollout batch (all dropped)")
        elif processes_without:
            self._skip(f"{processes_without} of {self.world_size} processes kept none of their episodes")
        elif hp.objective == "ppo" and self.any_process(len(kept) * self.world_size != kept_total):
            self._skip("dropped episodes left the processes unequal shares, and PPO's minibatch steps must match")
        else:
            update_metrics = (self._ppo_update(kept) if hp.objective == "ppo"
                              else self._reinforce_update(kept, baselines, kept_total))
            metrics.update(self._mean_over_processes(update_metrics))
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
        """Rewards and success over the whole rollout batch (all processes), and the dropped-episode count."""
        def sums(episodes: list[Episode]) -> list[float]:
            kept = [e for e in episodes if not e.dropped]
            return [sum(e.total_reward for e in kept), sum(e.won for e in kept), len(kept)]

        local = sums(sampled) + (sums(greedy) if greedy is not None else [0.0, 0.0, 0.0]) + [dropped]
        reward, wins, count, greedy_reward, _, greedy_count, dropped_total = self.sum_over_processes(*local)
        self.dropped_episodes += int(dropped_total) - dropped  # every process counts the whole batch's drops
        metrics = {"reward/sampled": reward / max(count, 1), "success_rate": wins / max(count, 1),
                   "episodes/dropped_total": float(self.dropped_episodes)}
        if greedy is not None:
            metrics["reward/greedy"] = greedy_reward / max(greedy_count, 1)
        return metrics

    def _mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        """The update's metrics averaged over processes (each computed them on its share)."""
        if self.world_size == 1 or not metrics:
            return metrics
        names = sorted(metrics)
        totals = self.sum_over_processes(*(metrics[name] for name in names))
        return {name: total / self.world_size for name, total in zip(names, totals)}

    def _usable(self, sampled: list[Episode], greedy: list[Episode] | None) -> tuple[list[Episode], list[float] | None]:
        """Episodes to learn from: ReMax pairs where both the sampled and the greedy episode survived."""
        if greedy is None:
            kept = [e for e in sampled if not e.dropped]
            self.dropped_episodes += len(sampled) - len(kept)
            return kept, None
        pairs = [(s, g) for s, g in zip(sampled, greedy) if not s.dropped and not g.dropped]
        self.dropped_episodes += sum(e.dropped for e in sampled + greedy)
        return [s for s, _ in pairs], [g.total_reward for _, g in pairs]

    def _skip(self, reason: str) -> None:
        self.skipped_batches += 1
        self.bad_batches += 1
        if self.bad_batches > self.hparams.max_bad_batches:
            raise FinetuneStopped(f"stopping fine-tuning: {self.bad_batches} consecutive updates were skipped (last: {reason}); "
                                  "check the rewards, the learning rate and the environment, then resume from the last checkpoint.")

    def _optimizer_step(self, loss: torch.Tensor, parameters: list[torch.nn.Parameter],
                        backward: Callable[[], None] | None = None) -> bool:
        """Backward (`backward`, or through `loss` directly), clip, step; False when the update was not taken."""
        if self.any_process(not bool(torch.isfinite(loss))):
            self._skip(f"loss is {float(loss)} (on at least one process)")
            return False
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if backward is None:
            self.manual_backward(loss)
        else:
            backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.hparams.max_grad_norm or math.inf)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad()
            self._skip(f"gradient norm is {float(grad_norm)}")
            return False
        self.bad_batches = 0
        if grad_norm == 0:
            # every advantage was zero (e.g. sampled and greedy episodes all failed): no information, and an
            # Adam step on a zero gradient would still move the weights along its momentum
            self.signal_free_updates += 1
            return False
        optimizer.step()
        return True

    def _reinforce_update(self, episodes: list[Episode], baselines: list[float] | None, kept_total: int) -> dict[str, float]:
        """One step on the loss over all processes' kept episodes: each process's loss (a mean over its episodes) is
        weighted by its share, W n_local / n_total, so that DDP's average of the gradients is the whole batch's."""
        micro = self.hparams.micro_batch_size
        in_micro_batches = micro is not None and micro < len(episodes)
        with torch.set_grad_enabled(not in_micro_batches):
            log_probs, entropy = self.engine.policy_log_probs(episodes)
        if in_micro_batches:  # leaves: the loss is taken once, its gradient w.r.t. them pushed through the policy later
            log_probs.requires_grad_(True)
            entropy.requires_grad_(True)
        batch = build_rollout_batch(episodes, log_probs, entropy, baselines)
        if self.any_process(batch.baseline_returns is not None and not bool(torch.isfinite(batch.baseline_returns).all())):
            self._skip("non-finite greedy rewards")
            return {}
        if self.any_process(not bool(torch.isfinite(batch.token_rewards).all())):
            self._skip("non-finite rewards")
            return {}
        loss, metrics = self.objective(batch, **self.objective_options)
        share = self.world_size * len(episodes) / kept_total
        weighted = loss * share if share != 1 else loss
        backward = self._micro_batch_backward(weighted, episodes, log_probs, entropy, micro) if in_micro_batches else None
        self._optimizer_step(weighted, self.trainable, backward)
        return {**metrics, "loss": float(loss.detach())}

    def _micro_batch_backward(self, loss: torch.Tensor, episodes: list[Episode], log_probs: torch.Tensor,
                              entropy: torch.Tensor, size: int) -> Callable[[], None]:
        """Backward through the policy `size` episodes at a time, so only one micro-batch's activations are alive.

        By the chain rule dL/dθ = Σ_{b,t} (∂L/∂log π_bt) ∂log π_bt/∂θ + (∂L/∂H_bt) ∂H_bt/∂θ, and the coefficients
        ∂L/∂log π, ∂L/∂H come from the loss on the detached full batch; each micro-batch then backpropagates
        Σ coefficient × (recomputed log π, H), which sums to the full-batch gradient for any objective."""
        def backward() -> None:
            coefficients = torch.autograd.grad(loss, [log_probs, entropy], allow_unused=True)
            for start in range(0, len(episodes), size):
                rows = slice(start, start + size)
                recomputed = self.engine.policy_log_probs(episodes[rows])
                width = recomputed[0].shape[1]
                terms = [(coefficient[rows, :width] * value).sum()
                         for coefficient, value in zip(coefficients, recomputed) if coefficient is not None]
                if terms:
                    self.manual_backward(torch.stack(terms).sum())
        return backward

    def _ppo_update(self, episodes: list[Episode]) -> dict[str, float]:
        hp = self.hparams
        with torch.no_grad():
            old_values = self.engine.values(self.value_model, episodes)
        first = build_rollout_batch(episodes, torch.zeros_like(old_values))
        advantages, returns = gae(first.token_rewards, old_values, first.mask, hp.gae_gamma, hp.gae_lambda)
        advantages = whiten(advantages, first.mask)
        if self.any_process(not bool(torch.isfinite(advantages).all())):
            self._skip("non-finite advantages")
            return {}
        metrics: dict[str, float] = {}
        order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(hp.seed + self.completed_updates))
        parameters = [*self.trainable, *self.value_model.parameters()]
        for _ in range(hp.ppo_epochs):
            for rows in order.chunk(max(1, min(hp.ppo_minibatches, len(episodes)))):
                chosen = [episodes[i] for i in rows.tolist()]
                log_probs, entropy = self.engine.policy_log_probs(chosen)
                batch = build_rollout_batch(chosen, log_probs, entropy)
                width = batch.mask.shape[1]
                batch.values = self.engine.values(self.value_model, chosen)
                batch.old_values = old_values[rows][:, :width]
                batch.advantages = advantages[rows][:, :width]
                batch.returns = returns[rows][:, :width]
                loss, metrics = self.objective(batch, **self.objective_options)
                self._optimizer_step(loss, parameters)
        return {**metrics, "advantage_mean": float(advantages[first.mask].mean())}

    # --- export (training.runs.ExportOnTrainEnd) --------------------------------------------
    def export_pretrained(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """save_pretrained of the fine-tuned model (frozen parts included, LoRA adapters merged into a copy) with its
        tokenizer. Every process holds the same weights (DDP), so the module's own are the state to export."""
        model = self.policy_model
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
                "tuning": hp.tuning, "trained_parameters": sum(p.numel() for p in self.trainable)}


def locals_without_self(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("self", "__class__")}


class FinetuneCLI(RunCLI):
    prog = "bwarea finetune"
    description = __doc__.split("\n\n")[0]
    model_class = FinetuneModule
    # one pass over the update indices still to run (model.updates sets the length; under PPO an update takes
    # several optimizer steps, so trainer.max_steps would not count updates)
    trainer_defaults = {"max_epochs": 1, "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_model_summary": False,
                        "precision": "auto"}


def run(args: list[str] | dict[str, Any] | None = None, exit_on_error: bool = False) -> Path:
    """Run `bwarea finetune` in this process; returns the run directory (the fine-tuned model is run_dir / "export")."""
    return run_cli(FinetuneCLI, args, exit_on_error)


def main(argv: list[str] | None = None) -> int:
    return cli_main(FinetuneCLI, argv)
