"""`bwarea pretrain`: BWArea stage 1 (world model + inverse dynamics + action codebook), stage 2 (the
cognitive policy, by behaviour cloning of the frozen inverse dynamics) and the equal-size autoregressive
baseline, as thin Lightning modules around bwarea's model code, driven by LightningCLI.

    bwarea pretrain --config configs/pretrain/tiny.yaml                   # stage 1 -> runs/tiny-world/export
    bwarea pretrain --config configs/pretrain/tiny-policy.yaml            # stage 2 <- runs/tiny-world/export
    bwarea pretrain --config configs/pretrain/tiny-ar.yaml                # AR baseline, same blocks and budget
    bwarea pretrain --config configs/pretrain/tiny.yaml --ckpt_path last  # resume the same run
    bwarea pretrain --help            bwarea pretrain --model.help WorldModelStage

The stage is the model class (`model.class_path`): WorldModelStage, PolicyStage or ARBaseline. Every
run writes one run directory (training/runs.py): config.yaml, checkpoints/, logs/ and, at the end,
export/ = `save_pretrained` model + tokenizer + training_info.json naming the stage, which the next
stage (and RL fine-tuning) loads by path. From Python: `run(args) -> run directory`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, CheckpointError, load_pretrained
from bwarea.cross_entropy import linear_cross_entropy
from bwarea.generation import choose
from training.data import PretrainData, tokenizer_fingerprint
from training.runs import RunCLI, UserError, cli_main, read_training_info, run_cli

STAGES = {"world": "stage 1 (WorldModelStage)", "policy": "stage 2 (PolicyStage)", "ar": "the AR baseline (ARBaseline)"}

DESCRIPTION = __doc__.split("\n\n")[0]


class PretrainError(UserError, ValueError):
    """A pretraining setting or input that cannot be used (wrong stage, vocabulary mismatch, ...)."""


@dataclass
class OptimizerSettings:
    """AdamW with linear warm-up, then cosine decay (or a constant rate); weight decay on weight matrices only.

    Args:
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay of linear and embedding weights (norms and the codebook are not decayed).
        betas: Adam beta1 and beta2.
        eps: Adam epsilon.
        warmup_steps: Optimizer steps of linear warm-up.
        schedule: "cosine" decays to min_lr_ratio x lr at trainer.max_steps; "constant" keeps lr after warm-up.
        min_lr_ratio: Final learning rate of the cosine schedule, as a fraction of lr.
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1


def lr_multiplier(step: int, settings: OptimizerSettings, max_steps: int) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - settings.warmup_steps) / max(1, max_steps - settings.warmup_steps))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def forward_flops_per_token(network: nn.Module, layers: int, hidden: int, seq_len: int) -> float:
    """Forward FLOPs per token of a transformer: 2 x matmul weights + attention scores and mixing (4 L H T)."""
    matmul = sum(module.weight.numel() for module in network.modules() if isinstance(module, nn.Linear))
    return 2.0 * matmul + 4.0 * layers * hidden * seq_len


def bwarea_config(preset: str, architecture: dict[str, Any] | None, tokenizer: Any) -> BWAreaConfig:
    """The preset with `architecture` overrides; vocabulary size and special tokens come from the tokenizer."""
    overrides = dict(architecture or {})
    vocab = len(tokenizer)
    if overrides.get("vocab_size", vocab) < vocab:
        raise PretrainError(f"model.architecture.vocab_size={overrides['vocab_size']} is smaller than the tokenizer's "
                            f"{vocab} tokens; drop it (the tokenizer sets the vocabulary) or use a smaller tokenizer.")
    overrides.setdefault("vocab_size", vocab)
    overrides.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    unknown = sorted(set(overrides) - BWAreaConfig.field_names())
    if unknown:
        raise PretrainError(f"model.architecture has unknown field {unknown[0]!r}; valid fields are "
                            f"{sorted(BWAreaConfig.field_names())}.")
    try:
        return BWAreaConfig.preset(preset, **overrides)
    except ValueError as error:
        raise PretrainError(f"model.preset {preset!r} with architecture {architecture}: {error}") from None


class _Totals:
    """Sums over one validation pass (token-weighted), reduced over all processes at the end."""

    def __init__(self, names: dict[str, int], device: torch.device):
        self.sums = {name: torch.zeros(size, dtype=torch.float64, device=device) for name, size in names.items()}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.sums[name] += torch.as_tensor(value, dtype=torch.float64, device=self.sums[name].device).detach()

    def reduced(self, strategy: Any) -> dict[str, torch.Tensor]:
        return {name: strategy.reduce(total, reduce_op="sum") for name, total in sorted(self.sums.items())}


class PretrainingModule(LightningModule):
    """What the three stages share: model construction from the data's tokenizer (in configure_model, so large
    models are built under the strategy's context), AdamW + schedule, checkpoint compatibility checks,
    FLOP estimates and the export. Subclasses define `stage`, build_model, trainable_parameters,
    training_step and the validation metrics."""

    stage: ClassVar[str] = ""

    def __init__(self, optimizer: OptimizerSettings = OptimizerSettings()):
        super().__init__()
        self.optimizer_settings = optimizer
        self.model: BWAreaModel | ARLanguageModel | None = None
        self.last_loss: torch.Tensor | None = None
        self._totals: _Totals | None = None

    # --- construction ----------------------------------------------------------------------
    @property
    def data(self) -> PretrainData:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if not isinstance(datamodule, PretrainData):
            raise PretrainError(f"{type(self).__name__} trains on a training.data.PretrainData data module; pass one to Trainer.fit.")
        return datamodule

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = self.build_model()
        limit = self.model.config.max_position_embeddings
        if self.data.block_size > limit:
            raise PretrainError(f"data.block_size={self.data.block_size} exceeds the model's max_position_embeddings={limit}; "
                                "lower data.block_size or raise model.architecture.max_position_embeddings.")

    def build_model(self) -> BWAreaModel | ARLanguageModel:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.optimizer_settings
        trainable = {id(p) for p in self.trainable_parameters()}
        decayed = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        params = [p for p in self.parameters() if id(p) in trainable]
        groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": settings.weight_decay},
                  {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_multiplier, settings=settings, max_steps=self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- throughput (used by training.runs.ThroughputMonitor) ------------------------------
    def tokens_per_step(self) -> int:
        return self.data.tokens_per_step(self.trainer)

    def flops_per_token(self) -> float:
        raise NotImplementedError

    # --- validation bookkeeping -------------------------------------------------------------
    def validation_totals(self) -> dict[str, int]:
        """Names and sizes of the sums accumulated during validation."""
        raise NotImplementedError

    def on_validation_epoch_start(self) -> None:
        self._totals = _Totals(self.validation_totals(), self.device)

    def on_validation_epoch_end(self) -> None:
        metrics = self.validation_metrics(self._totals.reduced(self.trainer.strategy))
        # already reduced over processes; sync_dist only averages identical values (and keeps Lightning quiet)
        self.log_dict({name: float(value) for name, value in metrics.items()}, sync_dist=True)

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    # --- checkpoints and export -------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bwarea"] = {"stage": self.stage, "model_config": self.model.config.to_dict(),
                                "tokenizer_fingerprint": tokenizer_fingerprint(self.data.tokenizer),
                                "vocabulary": len(self.data.tokenizer)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = getattr(self.trainer, "ckpt_path", None) or "the checkpoint"
        saved = checkpoint.get("bwarea")
        if saved is None:
            raise PretrainError(f"{path} was not written by bwarea pretrain; resume only from this command's checkpoints.")
        if saved["stage"] != self.stage:
            raise PretrainError(f"{path} is a checkpoint of {STAGES.get(saved['stage'], saved['stage'])}, but this run trains "
                                f"{STAGES[self.stage]}; resume it with the configuration it was trained with.")
        if saved["tokenizer_fingerprint"] != tokenizer_fingerprint(self.data.tokenizer):
            raise PretrainError(f"{path} was trained with another tokenizer ({saved['vocabulary']} tokens) than this run's "
                                f"({len(self.data.tokenizer)} tokens); resume with the original data.tokenizer and corpus.")
        if saved["model_config"] != self.model.config.to_dict():
            changed = sorted(k for k in saved["model_config"] if saved["model_config"][k] != self.model.config.to_dict().get(k))
            raise PretrainError(f"{path} was trained with a different model ({', '.join(changed)} differ); resume with "
                                "the model settings it was trained with.")

    def export_pretrained(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """save_pretrained (with the tokenizer) of the model held in `state_dict` (built on the meta device, so
        exporting never needs a second copy of a large model)."""
        weights = {name[len("model."):]: tensor for name, tensor in state_dict.items() if name.startswith("model.")}
        with torch.device("meta"):
            model = type(self.model)(self.model.config)
        model.load_state_dict(weights, assign=True)
        model.save_pretrained(directory, tokenizer=self.data.tokenizer)

    def training_info(self) -> dict[str, Any]:
        """The export's training_info.json: which stage produced it, how long it trained, on what data."""
        data = self.data
        return {
            "stage": self.stage, "model_type": self.model.config.model_type, "global_step": self.global_step,
            "tokens_seen": self.global_step * self.tokens_per_step(), "block_size": data.block_size,
            "global_batch_size": self.tokens_per_step() // data.block_size, "corpus": str(data.spec.corpus),
            "val_corpus": data.spec.val_corpus, "dirty_ratio": data.spec.dirty.ratio, "data_fingerprint": data.fingerprint,
            "tokenizer_fingerprint": tokenizer_fingerprint(data.tokenizer), "vocabulary": len(data.tokenizer),
            "parameters": self.model.num_parameters(),
            "val_metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")},
        }


def _log_train(module: LightningModule, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
    module.log("train/loss", loss, prog_bar=True, sync_dist=True)
    module.log_dict(metrics)


class WorldModelStage(PretrainingModule):
    """Stage 1: the language world model learns next tokens under the inverse dynamics' quantised actions
    (cross-entropy + codebook + commitment terms); the policy is untouched. Dead codes are restarted
    from recent inverse-dynamics features every `restart_dead_codes_every` steps.

    Args:
        preset: BWArea size preset (bwarea.BWAreaConfig.preset): tiny (~4M parameters), small (~23M) or 1b (2.7B).
        architecture: Overrides of bwarea.BWAreaConfig fields, e.g. {hidden_size: 64, world_layers: 2}. The
            tokenizer sets vocab_size (a larger value pads the embeddings), eos_token_id and pad_token_id.
        optimizer: AdamW settings.
        restart_dead_codes_every: Every this many optimizer steps, move codes whose usage fell below the model's
            dead_code_threshold onto inverse-dynamics features of the current batch (all processes'); 0 disables.
    """

    stage = "world"

    def __init__(self, preset: Literal["tiny", "small", "1b"] = "tiny", architecture: dict[str, Any] | None = None,
                 optimizer: OptimizerSettings = OptimizerSettings(), restart_dead_codes_every: int = 100):
        super().__init__(optimizer)
        self.preset, self.architecture = preset, architecture
        self.restart_dead_codes_every = restart_dead_codes_every

    def build_model(self) -> BWAreaModel:
        config = bwarea_config(self.preset, self.architecture, self.data.tokenizer)
        if self.restart_dead_codes_every and config.codebook_update == "loss" and isinstance(self.trainer.strategy, FSDPStrategy):
            # FSDP shards parameters and discards in-place edits of the gathered copy; buffers stay whole on every rank
            raise PretrainError("dead-code restarts under FSDP need the codebook as a buffer: set "
                                "model.init_args.architecture.codebook_update: ema (as the 1b presets do), or "
                                "model.init_args.restart_dead_codes_every: 0.")
        model = BWAreaModel(config)
        model.policy.requires_grad_(False)  # trained in stage 2
        return model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.model.stage1_parameters()

    def flops_per_token(self) -> float:
        config, length = self.model.config, self.data.block_size
        return 3 * (forward_flops_per_token(self.model.world, config.world_layers, config.hidden_size, length)
                    + forward_flops_per_token(self.model.inverse, config.inverse_layers, config.hidden_size, length)
                    + forward_flops_per_token(self.model.codebook, 0, 0, 0))

    def restart_dead_codes(self, batch: torch.Tensor) -> int:
        """Restart dead codes from this step's inverse-dynamics features of every process, in rank order (the
        same features one process would see with the whole global batch), with a draw seeded by the step."""
        with torch.no_grad():
            features = self.model.inverse(batch)
        if self.trainer.world_size > 1:
            features = self.all_gather(features).flatten(0, 1)
        generator = torch.Generator().manual_seed(self.global_step)
        return self.model.codebook.restart_dead_codes(features.reshape(-1, features.shape[-1]), generator=generator)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        every = self.restart_dead_codes_every
        first_micro_batch = batch_idx % self.trainer.accumulate_grad_batches == 0
        if every and self.global_step and self.global_step % every == 0 and first_micro_batch:
            # before this step's forward, so a checkpoint taken after step k-1 resumes into the same restart
            self.log("train/restarted_codes", float(self.restart_dead_codes(batch)))
        out = self.model.stage1(batch)
        self.last_loss = out.loss.detach()
        _log_train(self, out.loss, {
            "train/lm_loss": out.lm_loss.detach(), "train/perplexity": out.lm_loss.detach().exp(),
            "train/codebook_loss": out.codebook_loss.detach(), "train/commitment_loss": out.commitment_loss.detach(),
            "train/alive_codes": float(out.usage.alive_codes), "train/code_entropy": out.usage.entropy,
            "train/code_perplexity": out.usage.perplexity,
        })
        return out.loss

    def validation_totals(self) -> dict[str, int]:
        return {"nll": 1, "tokens": 1, "codes": self.model.config.num_actions}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.model.stage1(batch)
        tokens = out.target_mask.sum()
        self._totals.add("nll", out.lm_loss.float() * tokens)
        self._totals.add("tokens", tokens)
        self._totals.add("codes", torch.bincount(out.actions[out.target_mask], minlength=self.model.config.num_actions))

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = totals["nll"] / totals["tokens"]
        probs = totals["codes"] / totals["codes"].sum().clamp(min=1)
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        return {"val/loss": loss, "val/perplexity": loss.exp(), "val/alive_codes": (probs > 0).sum(),
                "val/code_entropy": entropy, "val/code_perplexity": entropy.exp()}


def stage1_export_info(path: str) -> dict[str, Any]:
    """training_info.json of a stage-1 export; CheckpointError/PretrainError if `path` is anything else."""
    info = read_training_info(path, purpose="model.stage1 of stage 2")
    if info["stage"] != "world":
        raise PretrainError(
            f"model.stage1 {path} is the export of {STAGES.get(info['stage'], info['stage'])}, not of stage 1 "
            "(WorldModelStage); pass the export/ directory of a stage-1 run, e.g. runs/tiny-world/export."
        )
    return info


class PolicyStage(PretrainingModule):
    """Stage 2: the cognitive policy learns to predict the frozen inverse dynamics' action for every position
    (behaviour cloning, cross-entropy over K actions); world model, inverse dynamics and codebook stay frozen.
    Validation reports BC accuracy (top-1/top-5), the "simulated LLM" perplexity (the world model driven by
    the policy's greedy or sampled actions), the world model's perplexity under the ID's actions (the
    upper bound), and the unigram perplexity (the floor).

    Args:
        stage1: Export directory of a stage-1 run (runs/<name>/export). Its tokenizer is used unless
            data.tokenizer is set, which must then be the same tokenizer.
        optimizer: AdamW settings.
        sample_temperature: Temperature of the policy's sampled actions for the sampled simulated-LLM perplexity.
        seed: Seed of the sampled actions in validation.
    """

    stage = "policy"

    def __init__(self, stage1: str, optimizer: OptimizerSettings = OptimizerSettings(), sample_temperature: float = 1.0,
                 seed: int = 0):
        super().__init__(optimizer)
        self.stage1 = str(Path(stage1).expanduser())
        self.stage1_info = stage1_export_info(self.stage1)
        if sample_temperature <= 0:
            raise PretrainError(f"model.sample_temperature must be positive, got {sample_temperature}.")
        self.sample_temperature, self.seed = sample_temperature, seed
        self._unigram: float | None = None

    def build_model(self) -> BWAreaModel:
        tokenizer = self.data.tokenizer
        if tokenizer_fingerprint(tokenizer) != self.stage1_info["tokenizer_fingerprint"]:
            raise PretrainError(
                f"data.tokenizer {self.data.tokenizer_path} ({len(tokenizer)} tokens) is not the tokenizer stage 1 was "
                f"trained with ({self.stage1_info['vocabulary']} tokens, saved in {self.stage1}); drop data.tokenizer "
                "to use the stage-1 tokenizer."
            )
        model = load_pretrained(self.stage1)
        if not isinstance(model, BWAreaModel):
            raise PretrainError(f"model.stage1 {self.stage1} holds a {type(model).__name__}, not a BWArea model.")
        model.requires_grad_(False)
        model.policy.requires_grad_(True)
        return model

    def train(self, mode: bool = True) -> "PolicyStage":
        super().train(mode)
        if self.model is not None:  # the frozen stage-1 networks always run in inference mode
            for frozen in (self.model.world, self.model.inverse, self.model.codebook):
                frozen.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.model.policy_parameters()

    def flops_per_token(self) -> float:
        config, length = self.model.config, self.data.block_size
        return (3 * forward_flops_per_token(self.model.policy, config.policy_layers, config.hidden_size, length)
                + forward_flops_per_token(self.model.inverse, config.inverse_layers, config.hidden_size, length))

    def behaviour_cloning(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy logits (B, T-1, K), inverse-dynamics labels (B, T-1), mean cross-entropy)."""
        with torch.no_grad():
            labels = self.model.label_actions(batch)
        logits = self.model.policy_logits(batch)[:, :-1]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        return logits, labels, loss

    @staticmethod
    def hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        return (logits.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(-1).sum()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logits, labels, loss = self.behaviour_cloning(batch)
        self.last_loss = loss.detach()
        count = labels.numel()
        _log_train(self, loss, {"train/bc_top1": self.hits(logits.detach(), labels, 1) / count,
                                "train/bc_top5": self.hits(logits.detach(), labels, 5) / count})
        return loss

    def simulated_nll(self, batch: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        """Mean next-token cross-entropy of the world model driven by the policy's own actions."""
        actions = choose(self.model.policy_logits(batch), temperature, generator=generator)
        hidden = self.model.world.hidden_states(batch, self.model.codebook.embed(actions))
        return linear_cross_entropy(hidden[:, :-1], self.model.world.lm_head.weight, batch[:, 1:])

    def validation_totals(self) -> dict[str, int]:
        return {name: 1 for name in ("bc_nll", "top1", "top5", "greedy_nll", "sampled_nll", "id_nll", "tokens")}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        logits, labels, loss = self.behaviour_cloning(batch)
        tokens = labels.numel()
        generator = torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + batch_idx * self.trainer.world_size + self.global_rank)
        totals = self._totals
        totals.add("bc_nll", loss * tokens)
        totals.add("top1", self.hits(logits, labels, 1))
        totals.add("top5", self.hits(logits, labels, 5))
        totals.add("greedy_nll", self.simulated_nll(batch, 0.0, None) * tokens)
        totals.add("sampled_nll", self.simulated_nll(batch, self.sample_temperature, generator) * tokens)
        totals.add("id_nll", self.model.stage1(batch).lm_loss * tokens)
        totals.add("tokens", tokens)

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        if self._unigram is None:
            self._unigram = self.data.unigram_perplexity()
        tokens = totals["tokens"]
        return {"val/loss": totals["bc_nll"] / tokens, "val/bc_top1": totals["top1"] / tokens,
                "val/bc_top5": totals["top5"] / tokens,
                "val/sim_greedy_perplexity": (totals["greedy_nll"] / tokens).exp(),
                "val/sim_sampled_perplexity": (totals["sampled_nll"] / tokens).exp(),
                "val/id_perplexity": (totals["id_nll"] / tokens).exp(), "val/unigram_perplexity": self._unigram}

    def training_info(self) -> dict[str, Any]:
        return {**super().training_info(), "stage1": self.stage1}


class ARBaseline(PretrainingModule):
    """The autoregressive baseline: a Llama-style language model of the stage-1 world model's shape (same
    width, depth, vocabulary and context; bwarea.ARConfig.matching), trained on the same blocks with the
    same optimizer settings — give it the same data and trainer settings as the stage-1 run.

    Args:
        preset: BWArea size preset whose world model the baseline matches: tiny, small or 1b.
        architecture: The same bwarea.BWAreaConfig overrides as the stage-1 run being compared with.
        optimizer: AdamW settings.
    """

    stage = "ar"

    def __init__(self, preset: Literal["tiny", "small", "1b"] = "tiny", architecture: dict[str, Any] | None = None,
                 optimizer: OptimizerSettings = OptimizerSettings()):
        super().__init__(optimizer)
        self.preset, self.architecture = preset, architecture

    def build_model(self) -> ARLanguageModel:
        return ARLanguageModel(ARConfig.matching(bwarea_config(self.preset, self.architecture, self.data.tokenizer)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def flops_per_token(self) -> float:
        config = self.model.config
        return 3 * forward_flops_per_token(self.model, config.num_layers, config.hidden_size, self.data.block_size)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        self.last_loss = loss.detach()
        _log_train(self, loss, {"train/perplexity": loss.detach().exp()})
        return loss

    def validation_totals(self) -> dict[str, int]:
        return {"nll": 1, "tokens": 1}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        tokens = batch[:, 1:].numel()
        self._totals.add("nll", self.model.loss(batch).float() * tokens)
        self._totals.add("tokens", tokens)

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = totals["nll"] / totals["tokens"]
        return {"val/loss": loss, "val/perplexity": loss.exp()}


# ----------------------------------------------------------------------------------------------
# Command line

TRAINER_DEFAULTS = {
    "max_steps": 1000,
    "val_check_interval": 100,        # batches; with check_val_every_n_epoch=None counted over the whole run
    "check_val_every_n_epoch": None,
    "log_every_n_steps": 10,
    "gradient_clip_val": 1.0,
    "use_distributed_sampler": False,  # PretrainData shards batches itself (exact resume, DDP = one big batch)
}


class PretrainCLI(RunCLI):
    """`bwarea pretrain`: RunCLI (training/runs.py) over the three stages and PretrainData; the stage is
    `model.class_path`, the default run name starts with the stage, and a stage-2 run is checked against
    its stage-1 export before anything is built."""

    prog = "bwarea pretrain"
    description = DESCRIPTION
    model_class = PretrainingModule
    subclass_mode_model = True
    datamodule_class = PretrainData
    trainer_defaults = TRAINER_DEFAULTS
    ignored_warnings = RunCLI.ignored_warnings + (
        # PretrainData positions and shards batches itself; with num_workers=0 on CPU the loader is no bottleneck
        ".*does not have many workers.*",
        # the training data order is a function of the restored step (training/data.py), so mid-run resumes are exact
        "You're resuming from a checkpoint that ended before the epoch ended",
    )

    def before_instantiate_classes(self) -> None:
        model, data = self.config.model, self.config.data
        if model.class_path.endswith(".PolicyStage") and not self.parse_only:
            stage1_export_info(model.init_args.stage1)  # fail here with the plain message, before any work
            if data.tokenizer is None:
                data.tokenizer = model.init_args.stage1  # stage 2 reads text with the stage-1 tokenizer

    def run_name_prefix(self) -> str:
        return type(self.model).stage


def run(args: list[str] | dict[str, Any] | None = None, exit_on_error: bool = False) -> Path:
    """Run `bwarea pretrain` in this process and return the run directory (its export is run_dir / "export").

    `args` are command-line style (["--config", "configs/pretrain/tiny.yaml", "--data.corpus", "data/tw"]) or a
    nested dict of the same options. Errors raise (DataError, PretrainError, TrainingDiverged, ... all
    training.runs.UserError; bwarea.CheckpointError) instead of exiting.
    """
    return run_cli(PretrainCLI, args, exit_on_error)


def main(argv: list[str] | None = None) -> int:
    return cli_main(PretrainCLI, argv)
