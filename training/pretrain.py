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
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy

from bwarea import (ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, CheckpointError, has_latent_actions,
                    load_pretrained)
from bwarea.adaptation import Variant, is_saved_model, prepare_tuning, start_model
from bwarea.codebook import usage_from_counts
from bwarea.diagnostics import ActionInformation, action_information, flops_per_token
from bwarea.lora import LoraSettings, has_lora, merge_lora
from bwarea.model import chosen_log_probs
from bwarea.pretrained_lm import init_codebook_kmeans
from common.errors import UserError
from training.adam_mini import AdamMini, adam_mini_param_groups
from training.data import PretrainData, tokenizer_fingerprint
from training.gem import TrainedWithSupervisedLoss
from training.runs import RunCLI, read_training_info, run_cli

STAGES = {"world": "stage 1 (WorldModelStage)", "policy": "stage 2 (PolicyStage)", "ar": "the AR baseline (ARBaseline)"}

DESCRIPTION = __doc__.split("\n\n")[0]


class PretrainError(UserError, ValueError):
    """A pretraining setting or input that cannot be used (wrong stage, vocabulary mismatch, ...)."""


@dataclass
class OptimizerSettings:
    """AdamW (or Adam-mini) with linear warm-up, then cosine decay (or a constant rate); weight decay on weight
    matrices only.

    Args:
        algorithm: "adamw", or "adam_mini" (training/adam_mini.py: one second-moment value per parameter block — per
            head for Q/K, per output row elsewhere, one per norm — about half of AdamW's optimizer state).
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay of linear and embedding weights (norms and the codebook are not decayed).
        betas: Adam beta1 and beta2.
        eps: Adam epsilon.
        warmup_steps: Optimizer steps of linear warm-up.
        schedule: "cosine" decays to min_lr_ratio x lr at trainer.max_steps; "constant" keeps lr after warm-up.
        min_lr_ratio: Final learning rate of the cosine schedule, as a fraction of lr.
    """

    algorithm: Literal["adamw", "adam_mini"] = "adamw"
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


def pretrained_start(source: str, variant: Variant, architecture: dict[str, Any] | None, tokenizer: Any):
    """The model a stage starts from when it adapts a pretrained LM (bwarea.adaptation.start_model), checked
    against the data's tokenizer; `architecture` holds the variant's options (e.g. num_actions, code_dim)."""
    options = dict(architecture or {})
    max_positions = options.pop("max_position_embeddings", None)
    try:
        model = start_model(source, variant, max_position_embeddings=max_positions, **options)
    except CheckpointError:
        raise  # already names the source and what is wrong with it
    except (ValueError, TypeError) as error:
        raise PretrainError(f"model.init_from {source} with model.architecture {architecture}: {error}") from None
    if len(tokenizer) > model.config.vocab_size:
        raise PretrainError(f"the data's tokenizer has {len(tokenizer)} tokens but model.init_from {source} has a vocabulary "
                            f"of {model.config.vocab_size}; drop data.tokenizer so the model's own tokenizer is used.")
    return model


INFORMATION_TOTALS = ("info_conditional_nll", "info_marginal_nll", "info_tokens")


def add_information(totals: "_Totals", information: ActionInformation) -> None:
    for name, value in zip(INFORMATION_TOTALS, (information.conditional_nll_sum, information.marginal_nll_sum,
                                               information.tokens)):
        totals.add(name, value)


def information_metrics(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """How much of the next token the action carries (bwarea.diagnostics.action_information), in nats per
    token: H(x_{t+1} | x_{<=t}) (marginal over the actions, an upper bound) and H(x_{t+1} | x_{<=t}, a_t)."""
    information = ActionInformation(*(float(totals[name]) for name in INFORMATION_TOTALS))
    if not information.tokens:
        return {}
    return {"val/next_token_entropy": information.marginal_nll, "val/next_token_entropy_given_action": information.conditional_nll,
            "val/action_information": information.information}


def code_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Alive codes, the largest code's share and the usage entropy of a validation pass's action histogram."""
    usage = usage_from_counts(counts)
    return {"val/alive_codes": usage.alive_codes, "val/largest_code_share": usage.largest_share,
            "val/code_entropy": usage.entropy, "val/code_perplexity": usage.perplexity}


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

    def __init__(self, optimizer: OptimizerSettings = OptimizerSettings(), tuning: str = "full",
                 lora: LoraSettings = LoraSettings()):
        super().__init__()
        self.optimizer_settings = optimizer
        self.tuning, self.lora = tuning, lora
        self.model: BWAreaModel | ARLanguageModel | None = None
        self.last_loss: torch.Tensor | None = None
        self._totals: _Totals | None = None
        self._trainable: list[nn.Parameter] = []

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
        try:
            self._trainable = prepare_tuning(self.model, self.tuning_stage, self.tuning, self.lora)
        except ValueError as error:
            raise PretrainError(f"model.tuning: {error}") from None
        limit = self.model.config.max_position_embeddings
        if self.data.block_size > limit:
            raise PretrainError(f"data.block_size={self.data.block_size} exceeds the model's max_position_embeddings={limit}; "
                                "lower data.block_size or raise model.architecture.max_position_embeddings.")

    def build_model(self) -> BWAreaModel | ARLanguageModel:
        raise NotImplementedError

    @property
    def tuning_stage(self) -> str:
        """Which part of the model this stage trains, in bwarea.adaptation's terms ("world" or "policy")."""
        return "policy" if self.stage in ("policy", "ar") else "world"

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What `tuning` made trainable (bwarea.adaptation.prepare_tuning)."""
        return self._trainable

    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.optimizer_settings
        if settings.algorithm == "adam_mini":
            if isinstance(self.trainer.strategy, FSDPStrategy):
                raise PretrainError("model.optimizer.algorithm adam_mini needs whole parameters to find its blocks, and FSDP "
                                    "flattens them; use adamw under FSDP, or DDP with adam_mini.")
            groups = adam_mini_param_groups(self.model, self.trainable_parameters(), weight_decay=settings.weight_decay)
            optimizer = AdamMini(groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)
        else:
            trainable = {id(p) for p in self.trainable_parameters()}
            decayed = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
            params = [p for p in self.parameters() if id(p) in trainable]
            groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": settings.weight_decay},
                      {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=tuple(settings.betas),
                                          eps=settings.eps)
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
            if has_lora(self.model):  # the same adapters, so the state fits; merged before saving
                prepare_tuning(model, self.tuning_stage, self.tuning, self.lora)
        model.load_state_dict(weights, assign=True)
        merge_lora(model)
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
            "parameters": self.model.num_parameters(), "tuning": self.tuning,
            "trained_parameters": sum(p.numel() for p in self._trainable),
            "val_metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")},
        }


def _log_train(module: LightningModule, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
    module.log("train/loss", loss, prog_bar=True, sync_dist=True)
    module.log_dict(metrics)


class WorldModelStage(PretrainingModule):
    """Stage 1: the language world model learns next tokens under the inverse dynamics' quantised actions
    (cross-entropy + codebook + commitment terms); the policy is untouched. Dead codes are restarted
    from recent inverse-dynamics features every `restart_dead_codes_every` steps.

    From scratch (a preset) or from a pretrained language model (`init_from`, bwarea.adaptation): then the world
    model starts as that LM exactly, the data use its tokenizer, and the codebook is initialised by k-means on
    inverse-dynamics features of the first training batches.

    Args:
        preset: BWArea size preset (bwarea.BWAreaConfig.preset): tiny (~4M parameters), small (~23M) or 1b (2.7B).
            Ignored with init_from.
        architecture: Overrides of bwarea.BWAreaConfig fields, e.g. {hidden_size: 64, world_layers: 2}. The
            tokenizer sets vocab_size (a larger value pads the embeddings), eos_token_id and pad_token_id. With
            init_from only the action fields apply (num_actions, code_dim, codebook_update, ...; for CoLA its own
            fields), plus max_position_embeddings to cap the context the model is built for.
        optimizer: AdamW settings.
        restart_dead_codes_every: Every this many optimizer steps, move codes whose usage fell below the model's
            dead_code_threshold onto inverse-dynamics features of the current batch (all processes'); 0 disables.
        init_from: A pretrained Hugging Face causal LM (model directory or .gguf file; Llama, Qwen2 or Mistral
            family) or a model directory written by `bwarea convert hf`. Unset: train from scratch.
        variant: With init_from: "bwarea" (three networks initialised from the LM) or "cola" (a frozen LM with
            small action networks on its last hidden state).
        tuning: What trains: "full" (world model, inverse dynamics, codebook), "actions" (injection, inverse
            dynamics and codebook; the world model's trunk and head frozen) or "lora" (LoRA adapters on the world and
            inverse trunks, merged into the export, plus injection, code projection and codebook). CoLA: "full".
        lora: LoRA rank, alpha, dropout and target layers (tuning: lora).
        codebook_init: With init_from: "kmeans" initialises the codebook from inverse-dynamics features of the
            first codebook_init_batches training batches (unless the source's codebook already was); "keep" keeps it.
        codebook_init_batches: Training batches whose features the k-means initialisation clusters.
        diagnostic_batches: Validation batches on which the action's information about the next token is
            estimated (about 2K world-model forward passes per batch: bwarea.diagnostics); 0 disables.
    """

    stage = "world"

    def __init__(self, preset: Literal["tiny", "small", "1b"] = "tiny", architecture: dict[str, Any] | None = None,
                 optimizer: OptimizerSettings = OptimizerSettings(), restart_dead_codes_every: int = 100,
                 init_from: str | None = None, variant: Literal["bwarea", "cola"] = "bwarea",
                 tuning: Literal["full", "actions", "lora"] = "full", lora: LoraSettings = LoraSettings(),
                 codebook_init: Literal["kmeans", "keep"] = "kmeans", codebook_init_batches: int = 4,
                 diagnostic_batches: int = 2):
        super().__init__(optimizer, tuning, lora)
        self.preset, self.architecture = preset, architecture
        self.restart_dead_codes_every = restart_dead_codes_every
        self.init_from, self.variant = init_from, variant
        self.codebook_init, self.codebook_init_batches = codebook_init, codebook_init_batches
        for name, value, minimum in (("codebook_init_batches", codebook_init_batches, 1),
                                     ("diagnostic_batches", diagnostic_batches, 0)):
            if value < minimum:
                raise PretrainError(f"model.{name} must be at least {minimum}, got {value}.")
        self.diagnostic_batches = diagnostic_batches

    def build_model(self) -> BWAreaModel:
        if self.init_from is not None:
            model = pretrained_start(self.init_from, self.variant, self.architecture, self.data.tokenizer)
        else:
            model = BWAreaModel(bwarea_config(self.preset, self.architecture, self.data.tokenizer))
        codebook_update = getattr(model.config, "codebook_update", None)
        if self.restart_dead_codes_every and codebook_update == "loss" and isinstance(self.trainer.strategy, FSDPStrategy):
            # FSDP shards parameters and discards in-place edits of the gathered copy; buffers stay whole on every rank
            raise PretrainError("dead-code restarts under FSDP need the codebook as a buffer: set "
                                "model.init_args.architecture.codebook_update: ema (as the 1b presets do), or "
                                "model.init_args.restart_dead_codes_every: 0.")
        return model

    def on_fit_start(self) -> None:
        if self.needs_codebook_init():
            self.initialise_codebook()

    def needs_codebook_init(self) -> bool:
        """k-means only when a fresh run starts from a pretrained LM whose codebook is still random (never over a
        trained, released or already clustered codebook)."""
        if self.init_from is None or self.codebook_init != "kmeans" or not isinstance(self.model, BWAreaModel):
            return False
        if getattr(self.trainer, "ckpt_path", None):
            return False  # resuming: the checkpoint holds the trained codebook
        if is_saved_model(self.init_from):  # only a `bwarea convert hf` output without --corpus has a random codebook
            info_file = Path(self.init_from).expanduser() / "training_info.json"
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            return info.get("codebook_init") == "random"
        return True

    def initialise_codebook(self) -> None:
        """k-means over inverse-dynamics features of the first training batches; the first process's result
        is broadcast so every replica starts from the same codebook."""
        batches = itertools.islice(iter(self.data.train_dataloader()), self.codebook_init_batches)
        stats = init_codebook_kmeans(self.model, (batch.to(self.device) for batch in batches),
                                     generator=torch.Generator().manual_seed(0))
        codebook = self.model.codebook
        for state in (codebook.codebook, *((codebook.ema_counts, codebook.ema_sums) if codebook.update == "ema" else ())):
            state.data.copy_(self.trainer.strategy.broadcast(state.data, src=0))
        if self.trainer.is_global_zero:
            print(f"codebook initialised by k-means on {self.codebook_init_batches} training batches: "
                  f"{stats['alive_codes']:.0f} of {codebook.num_codes} codes used, largest share {stats['largest_cluster_share']:.3f}",
                  flush=True)

    def flops_per_token(self) -> float:
        return flops_per_token(self.model, self.data.block_size)["train_stage1"]

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
        every = self.restart_dead_codes_every if isinstance(self.model, BWAreaModel) else 0  # CoLA has no VQ codebook
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
        return {"nll": 1, "tokens": 1, "codes": self.model.config.num_actions, **dict.fromkeys(INFORMATION_TOTALS, 1)}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.model.stage1(batch)
        tokens = out.target_mask.sum()
        codes = torch.bincount(out.actions[out.target_mask], minlength=self.model.config.num_actions)
        self._totals.add("nll", out.lm_loss.float() * tokens)
        self._totals.add("tokens", tokens)
        self._totals.add("codes", codes)
        if batch_idx < self.diagnostic_batches:
            # no trained policy yet: the marginal mixes the actions by their frequency in this batch
            prior = codes.float() / codes.sum().clamp(min=1)
            add_information(self._totals, action_information(self.model, batch, prior=prior))

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = totals["nll"] / totals["tokens"]
        return {"val/loss": loss, "val/perplexity": loss.exp(), **code_metrics(totals["codes"]),
                **information_metrics(totals)}


def stage1_export_info(path: str) -> dict[str, Any]:
    """training_info.json of a stage-1 export; CheckpointError/PretrainError if `path` is anything else."""
    info = read_training_info(path, purpose="model.stage1 of stage 2")
    if info["stage"] != "world":
        raise PretrainError(
            f"model.stage1 {path} is the export of {STAGES.get(info['stage'], info['stage'])}, not of stage 1 "
            "(WorldModelStage); pass the export/ directory of a stage-1 run, e.g. runs/tiny-world/export."
        )
    return info


class PolicyStage(TrainedWithSupervisedLoss, PretrainingModule):
    """Stage 2: the cognitive policy learns to predict the frozen inverse dynamics' action for every position
    (behaviour cloning over K actions, by cross-entropy or GEM); world model, inverse dynamics and codebook stay
    frozen. Validation reports the BC cross-entropy (val/loss, whatever trains), BC accuracy (top-1/top-5), the
    mean entropy of the policy's K-way distribution (val/action_entropy, nats); the "simulated LLM" perplexity,
    scored as generation scores text (two streams: history actions from the inverse dynamics, the current step's
    action from the policy, greedy or sampled) and, under its own name, with the policy's actions at every
    position (all-policy); the world model's perplexity under the ID's actions (the upper bound); the unigram
    perplexity (the floor); and how much of the next token the action carries (nats, on the first
    `diagnostic_batches` batches).

    Args:
        stage1: Export directory of a stage-1 run (runs/<name>/export). Its tokenizer is used unless
            data.tokenizer is set, which must then be the same tokenizer.
        optimizer: AdamW settings.
        sample_temperature: Temperature of the policy's sampled actions for the sampled simulated-LLM perplexity.
        seed: Seed of the sampled actions in validation.
        tuning: What trains: "full" (the whole policy), "head" (its K-way head; the trunk stays the pretrained
            LM's) or "lora" (LoRA adapters on the policy trunk, merged into the export, plus the head).
        lora: LoRA rank, alpha, dropout and target layers (tuning: lora).
        diagnostic_batches: Validation batches on which the action's information about the next token is
            estimated (about 2K world-model forward passes per batch: bwarea.diagnostics); 0 disables.
        loss: The behaviour-cloning loss: "cross_entropy", or "gem" (training.gem: its gradient is softmax(z / gem_beta)
            minus the one-hot label, which keeps the action distribution flatter, more diverse for RL to explore). A run
            resumes only with the loss it was trained with.
        gem_beta: GEM's temperature beta > 0 (loss: gem); 1 is cross-entropy, smaller is flatter.
    """

    stage = "policy"

    def __init__(self, stage1: str, optimizer: OptimizerSettings = OptimizerSettings(), sample_temperature: float = 1.0,
                 seed: int = 0, tuning: Literal["full", "head", "lora"] = "full", lora: LoraSettings = LoraSettings(),
                 diagnostic_batches: int = 2, loss: Literal["cross_entropy", "gem"] = "cross_entropy", gem_beta: float = 0.7):
        super().__init__(optimizer, tuning, lora)
        self.choose_loss(loss, gem_beta)
        self.stage1 = str(Path(stage1).expanduser())
        self.stage1_info = stage1_export_info(self.stage1)
        if sample_temperature <= 0:
            raise PretrainError(f"model.sample_temperature must be positive, got {sample_temperature}.")
        if diagnostic_batches < 0:
            raise PretrainError(f"model.diagnostic_batches must be at least 0, got {diagnostic_batches}.")
        self.sample_temperature, self.seed, self.diagnostic_batches = sample_temperature, seed, diagnostic_batches
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
        if not has_latent_actions(model):
            raise PretrainError(f"model.stage1 {self.stage1} holds a {type(model).__name__}, not a latent-action model.")
        return model

    def train(self, mode: bool = True) -> "PolicyStage":
        super().train(mode)
        if self.model is not None:  # the frozen stage-1 networks always run in inference mode
            for frozen in (self.model.world, self.model.inverse, self.model.codebook):
                frozen.eval()
        return self

    def flops_per_token(self) -> float:
        return flops_per_token(self.model, self.data.block_size)["train_stage2"]

    def behaviour_cloning(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy logits (B, T-1, K), inverse-dynamics labels (B, T-1))."""
        with torch.no_grad():
            labels = self.model.label_actions(batch)
        return self.model.policy_logits(batch)[:, :-1], labels

    @staticmethod
    def hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        return (logits.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(-1).sum()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logits, labels = self.behaviour_cloning(batch)
        loss = self.training_loss(logits, labels)
        self.last_loss = loss.detach()
        count = labels.numel()
        _, entropy = chosen_log_probs(logits.detach(), labels)
        _log_train(self, loss, {"train/bc_top1": self.hits(logits.detach(), labels, 1) / count,
                                "train/bc_top5": self.hits(logits.detach(), labels, 5) / count,
                                "train/action_entropy": entropy.mean()})
        return loss

    def simulated_nll(self, batch: torch.Tensor, temperature: float, generator: torch.Generator | None,
                      two_stream: bool) -> torch.Tensor:
        """Mean next-token cross-entropy of the world model driven by the policy: at the current step only
        (two streams, as generation scores) or at every position (all-policy)."""
        simulate = self.model.two_stream_simulated_logits if two_stream else self.model.simulated_logits
        logits, _ = simulate(batch, temperature=temperature, generator=generator)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten())

    def validation_totals(self) -> dict[str, int]:
        names = ("bc_nll", "action_entropy", "top1", "top5", "greedy_nll", "sampled_nll", "all_policy_greedy_nll",
                 "all_policy_sampled_nll", "id_nll", "tokens", *INFORMATION_TOTALS)
        return {**{name: 1 for name in names}, "codes": self.model.config.num_actions}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        logits, labels = self.behaviour_cloning(batch)
        chosen, entropy = chosen_log_probs(logits, labels)
        tokens = labels.numel()
        totals = self._totals
        totals.add("bc_nll", -chosen.sum())  # cross-entropy whatever the training loss, so runs stay comparable
        totals.add("action_entropy", entropy.sum())
        totals.add("top1", self.hits(logits, labels, 1))
        totals.add("top5", self.hits(logits, labels, 5))
        totals.add("codes", torch.bincount(labels.flatten(), minlength=self.model.config.num_actions))
        for prefix, two_stream in (("", True), ("all_policy_", False)):
            generator = torch.Generator(device=self.device).manual_seed(
                self.seed * 1_000_003 + batch_idx * self.trainer.world_size + self.global_rank)
            totals.add(f"{prefix}greedy_nll", self.simulated_nll(batch, 0.0, None, two_stream) * tokens)
            totals.add(f"{prefix}sampled_nll", self.simulated_nll(batch, self.sample_temperature, generator, two_stream) * tokens)
        totals.add("id_nll", self.model.stage1(batch).lm_loss * tokens)
        totals.add("tokens", tokens)
        if batch_idx < self.diagnostic_batches:
            add_information(totals, action_information(self.model, batch))

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        if self._unigram is None:
            self._unigram = self.data.unigram_perplexity()
        tokens = totals["tokens"]
        return {"val/loss": totals["bc_nll"] / tokens, "val/action_entropy": totals["action_entropy"] / tokens,
                "val/bc_top1": totals["top1"] / tokens, "val/bc_top5": totals["top5"] / tokens,
                "val/sim_greedy_perplexity": (totals["greedy_nll"] / tokens).exp(),
                "val/sim_sampled_perplexity": (totals["sampled_nll"] / tokens).exp(),
                "val/sim_all_policy_greedy_perplexity": (totals["all_policy_greedy_nll"] / tokens).exp(),
                "val/sim_all_policy_sampled_perplexity": (totals["all_policy_sampled_nll"] / tokens).exp(),
                "val/id_perplexity": (totals["id_nll"] / tokens).exp(), "val/unigram_perplexity": self._unigram,
                **code_metrics(totals["codes"]), **information_metrics(totals)}

    def training_info(self) -> dict[str, Any]:
        return {**super().training_info(), "stage1": self.stage1}


class ARBaseline(TrainedWithSupervisedLoss, PretrainingModule):
    """The autoregressive baseline: a Llama-style language model of the stage-1 world model's shape (same
    width, depth, vocabulary and context; bwarea.ARConfig.matching), trained on the same blocks with the
    same optimizer settings — give it the same data and trainer settings as the stage-1 run. When BWArea
    adapts a pretrained LM (init_from), the baseline is that same LM fine-tuned on the same data and budget.
    Its next-token loss is cross-entropy or GEM; validation reports cross-entropy (val/loss, val/perplexity)
    whatever trains, and the mean entropy of the next-token distribution (val/token_entropy, nats).

    Args:
        preset: BWArea size preset whose world model the baseline matches: tiny, small or 1b. Ignored with init_from.
        architecture: The same bwarea.BWAreaConfig overrides as the stage-1 run being compared with (with
            init_from: only max_position_embeddings applies).
        optimizer: AdamW settings.
        init_from: The pretrained Hugging Face causal LM (directory or .gguf) the compared BWArea started from,
            or a directory written by `bwarea convert hf --variant ar`. Unset: train from scratch.
        tuning: "full" (every weight) or "lora" (LoRA adapters on the trunk, merged into the export).
        lora: LoRA rank, alpha, dropout and target layers (tuning: lora).
        loss: The next-token loss: "cross_entropy" (fused with the head, chunked) or "gem" (training.gem; materialises
            the (B, T, V) logits). A run resumes only with the loss it was trained with.
        gem_beta: GEM's temperature beta > 0 (loss: gem); 1 is cross-entropy, smaller is flatter.
    """

    stage = "ar"

    def __init__(self, preset: Literal["tiny", "small", "1b"] = "tiny", architecture: dict[str, Any] | None = None,
                 optimizer: OptimizerSettings = OptimizerSettings(), init_from: str | None = None,
                 tuning: Literal["full", "lora"] = "full", lora: LoraSettings = LoraSettings(),
                 loss: Literal["cross_entropy", "gem"] = "cross_entropy", gem_beta: float = 0.7):
        super().__init__(optimizer, tuning, lora)
        self.choose_loss(loss, gem_beta)
        self.preset, self.architecture, self.init_from = preset, architecture, init_from

    def build_model(self) -> ARLanguageModel:
        if self.init_from is not None:
            return pretrained_start(self.init_from, "ar", self.architecture, self.data.tokenizer)
        return ARLanguageModel(ARConfig.matching(bwarea_config(self.preset, self.architecture, self.data.tokenizer)))

    def flops_per_token(self) -> float:
        return flops_per_token(self.model, self.data.block_size)["train"]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.loss_name == "cross_entropy":
            loss = cross_entropy = self.model.loss(batch)  # fused with the head: no (B, T, V) logits
        else:
            logits = self.model(batch[:, :-1])
            loss = self.training_loss(logits, batch[:, 1:])
            cross_entropy = -chosen_log_probs(logits.detach(), batch[:, 1:])[0].mean()
        self.last_loss = loss.detach()
        _log_train(self, loss, {"train/perplexity": cross_entropy.detach().exp()})
        return loss

    def validation_totals(self) -> dict[str, int]:
        return {"nll": 1, "token_entropy": 1, "tokens": 1}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        hidden = self.model.trunk(batch[:, :-1])
        for row_hidden, row_targets in zip(hidden, batch[:, 1:]):  # one sequence's (T, V) logits at a time
            chosen, entropy = chosen_log_probs(self.model.lm_head(row_hidden), row_targets)
            self._totals.add("nll", -chosen.sum())
            self._totals.add("token_entropy", entropy.sum())
            self._totals.add("tokens", chosen.numel())

    def validation_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = totals["nll"] / totals["tokens"]
        return {"val/loss": loss, "val/perplexity": loss.exp(),
                "val/token_entropy": totals["token_entropy"] / totals["tokens"]}


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
        init_from = model.init_args.get("init_from")
        if init_from is not None and data.tokenizer is None:
            data.tokenizer = init_from  # a pretrained LM reads text with its own tokenizer

    def run_name_prefix(self) -> str:
        return type(self.model).stage


def run(args: list[str] | dict[str, Any] | None = None, exit_on_error: bool = False) -> Path:
    """Run `bwarea pretrain` in this process and return the run directory (its export is run_dir / "export").

    `args` are command-line style (["--config", "configs/pretrain/tiny.yaml", "--data.corpus", "data/tw"]) or a
    nested dict of the same options. Errors raise (DataError, PretrainError, TrainingDiverged, ... all
    common.errors.UserError, bwarea.CheckpointError among them) instead of exiting.
    """
    return run_cli(PretrainCLI, args, exit_on_error)
