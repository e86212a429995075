"""GEM, entropic distribution matching for supervised fine-tuning (Li et al. 2024; docs METHODS.md §8, §10),
and the choice between it and cross-entropy for the supervised stages (stage-2 behaviour cloning, the AR
baseline's next-token loss).

Per position with logits z (K,) and target y, cross-entropy's gradient is softmax(z) - onehot(y); GEM's is

    dL/dz = softmax(z / beta) - onehot(y)        (beta ~ 0.7)

One loss with exactly that gradient: with p = softmax(z) and q = softmax(z / beta) held constant (detached),

    L = -sum_j q_j (log p_y - log p_j) = -log p_y + sum_j q_j log p_j

(dL/dz_k = (p_k - onehot_k) + (q_k - p_k) = q_k - onehot_k, since sum_j q_j = 1). Trained on targets drawn
from a distribution pi, the fixed point is q = pi, i.e. p proportional to pi^beta: for beta < 1 the model's
distribution is flatter than the data's (against overfitting, and diversity for RL to explore later);
beta = 1 is cross-entropy. The value of L is not a likelihood (it can be negative): report cross-entropy
alongside it.

    loss = gem_loss(logits, targets, beta=0.7, mask=real)             # logits (N, K), targets (N,), mask (N,)
    loss = supervised_loss("gem", logits, targets, beta=0.7)         # or "cross_entropy"
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from common.errors import UserError


class SupervisedLossError(UserError, ValueError):
    """A supervised-loss setting that cannot be used (unknown name, beta <= 0, a resume under another loss)."""


def check_gem_beta(beta: float) -> None:
    if not beta > 0:
        raise SupervisedLossError(f"GEM's beta (gem_beta) must be positive (about 0.7; 1 is cross-entropy), got {beta}.")


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_position.mean()
    weights = mask.reshape(-1).float()
    return (per_position * weights).sum() / weights.sum().clamp(min=1)


def gem_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 0.7, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean GEM loss over the real positions (module docstring), computed in fp32.

    logits (N, K) or (..., K); targets (N,) or (...) class indices; mask (N,) or (...) bool, True where the
    position counts (None: all). Gradient w.r.t. the logits of a counted row: (softmax(z / beta) - onehot) / n_real.
    """
    check_gem_beta(beta)
    logits = logits.float().reshape(-1, logits.shape[-1])
    log_probs = logits.log_softmax(-1)
    tempered = (logits.detach() / beta).softmax(-1)  # q: a constant, so the gradient is q - onehot
    per_position = (tempered * log_probs).sum(-1) - log_probs.gather(-1, targets.reshape(-1, 1)).squeeze(-1)
    return _masked_mean(per_position, mask)


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the real positions, in fp32 (gem_loss's shapes)."""
    logits, targets = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if mask is None:
        return F.cross_entropy(logits, targets)
    return _masked_mean(F.cross_entropy(logits, targets, reduction="none"), mask)


LOSSES = {"cross_entropy": cross_entropy_loss, "gem": gem_loss}


def _loss_function(name: str):
    if name not in LOSSES:
        raise SupervisedLossError(f"unknown supervised loss {name!r}; choose one of {', '.join(LOSSES)}.")
    return LOSSES[name]


def check_supervised_loss(name: str, gem_beta: float) -> None:
    """SupervisedLossError unless `name` is a known loss and gem_beta a usable beta."""
    _loss_function(name)
    check_gem_beta(gem_beta)


def supervised_loss(name: str, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                    **options: Any) -> torch.Tensor:
    """The loss `name` ("cross_entropy", or "gem" with its option `beta`) of logits against targets (gem_loss's shapes)."""
    return _loss_function(name)(logits, targets, mask=mask, **options)


def loss_settings(name: str, gem_beta: float) -> dict[str, Any]:
    """The loss as a checkpoint records it, and the options supervised_loss takes: GEM's beta, nothing for cross-entropy."""
    return {"loss": name, "options": {"beta": gem_beta} if name == "gem" else {}}


def check_resumed_loss(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: str) -> None:
    """A resumed run must train with the loss its checkpoint was trained with (loss_settings); checkpoints written
    before the choice existed (saved None) were trained with cross-entropy."""
    saved = saved or loss_settings("cross_entropy", 0.7)
    if saved != current:
        raise SupervisedLossError(
            f"{checkpoint} was trained with loss {_describe(saved)}, but this run asks for {_describe(current)}; resume it "
            f"with model.loss: {saved['loss']}{''.join(f' and model.gem_{k}: {v}' for k, v in saved['options'].items())}, "
            "or start a new run (another --run.name).")


def _describe(settings: dict[str, Any]) -> str:
    return settings["loss"] + "".join(f" ({name} {value})" for name, value in settings["options"].items())


class TrainedWithSupervisedLoss:
    """Mixin of a LightningModule trained with a choice of supervised loss (listed before the LightningModule base).

    Call `choose_loss(loss, gem_beta)` in __init__ and train with `self.training_loss(logits, targets)`. Checkpoints
    record the choice; resuming a checkpoint under another loss fails with a clear error instead of mixing the two.
    """

    loss_choice: dict[str, Any]  # loss_settings(loss, gem_beta)

    def choose_loss(self, loss: str, gem_beta: float) -> None:
        check_supervised_loss(loss, gem_beta)
        self.loss_choice = loss_settings(loss, gem_beta)

    @property
    def loss_name(self) -> str:
        return self.loss_choice["loss"]

    def training_loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return supervised_loss(self.loss_name, logits, targets, mask, **self.loss_choice["options"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["supervised_loss"] = self.loss_choice

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        path = getattr(self.trainer, "ckpt_path", None) or "the checkpoint"
        check_resumed_loss(checkpoint.get("supervised_loss"), self.loss_choice, str(path))
