"""Diagnostics for latent-action models: does the action carry information, are the codes used, what
does a token cost.

- `action_information`: how much of the next token the action carries, estimated on validation text as
  I(x_{t+1}; a_t | x_{<=t}) ~= marginal NLL - conditional NLL (nats per token), with
    conditional NLL = -log p(x_{t+1} | x_{<=t}, a_t = ID label)                 ~ H(x_{t+1} | x_{<=t}, a_t)
    marginal NLL    = -log sum_k prior_t(k) p(x_{t+1} | x_{<=t}, a_t = k)       >= H(x_{t+1} | x_{<=t})
  both with the history a_{<t} labelled by the inverse dynamics (the two-stream conditionals). Near 0
  means the world model ignores its actions: the policy then controls nothing.
- code usage (how many codes a batch of actions uses, how evenly, the largest share): bwarea.codebook.code_usage.
- `forward_flops_per_token`, `flops_per_token`: training and generation FLOPs per token of BWArea and
  of the autoregressive baseline, so the two can be compared at equal compute.

`action_information` works for any model offering `label_actions`, `policy_logits`,
`two_stream_logits` and `config.num_actions` (as `BWAreaModel` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bwarea.autoregressive import ARLanguageModel
from bwarea.cola import CoLAModel
from bwarea.model import BWAreaModel, transition_mask


@dataclass
class ActionInformation:
    """Sums over counted transitions, so results add over batches (`+`) and, field by field, across
    processes (all-reduce the three numbers); the properties are per-token means in nats."""

    conditional_nll_sum: float
    marginal_nll_sum: float
    tokens: int

    def __add__(self, other: "ActionInformation") -> "ActionInformation":
        return ActionInformation(self.conditional_nll_sum + other.conditional_nll_sum,
                                 self.marginal_nll_sum + other.marginal_nll_sum, self.tokens + other.tokens)

    @property
    def conditional_nll(self) -> float:
        return self.conditional_nll_sum / max(self.tokens, 1)

    @property
    def marginal_nll(self) -> float:
        return self.marginal_nll_sum / max(self.tokens, 1)

    @property
    def information(self) -> float:
        """Estimated I(x_{t+1}; a_t | x_{<=t}) in nats per token: what knowing the action saves."""
        return self.marginal_nll - self.conditional_nll


def _log_prior(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               prior: torch.Tensor | None) -> torch.Tensor:
    """(B, T-1, K) or (K,) log prior_t(k): the policy's log-softmax by default, else log(prior)."""
    num_actions = model.config.num_actions
    if prior is None:
        return model.policy_logits(input_ids, attention_mask)[:, :-1].float().log_softmax(-1)
    expected = {(num_actions,), (input_ids.shape[0], input_ids.shape[1] - 1, num_actions)}
    if tuple(prior.shape) not in expected:
        raise ValueError(f"prior has shape {tuple(prior.shape)}; give a ({num_actions},) distribution over actions "
                         f"or one per transition of shape ({input_ids.shape[0]}, {input_ids.shape[1] - 1}, {num_actions}).")
    prior = prior.float().to(input_ids.device)
    if bool((prior < 0).any()) or float((prior.sum(-1) - 1).abs().max()) > 1e-4:
        raise ValueError("prior must be non-negative and sum to 1 over the actions; normalise it (e.g. counts / counts.sum()).")
    return prior.log()


@torch.no_grad()
def action_information(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       prior: torch.Tensor | None = None, chunk: int = 8) -> ActionInformation:
    """Conditional and marginal next-token NLL of a batch of validation text (module docstring).

    input_ids (B, T), attention_mask (B, T) for left or right padding; only transitions between real
    tokens count. prior: None = the policy's pi(. | x_{<=t}); a (K,) distribution (e.g. the empirical
    code frequencies in stage 1, when the policy is still untrained); or one per transition (B, T-1, K).
    Cost: every action k is scored at every position, `chunk` actions per `two_stream_logits` call on
    chunk x B rows — about K two-stream forwards (each one inverse-dynamics pass, the world model's lower
    half and its upper half over 2T-1 positions), i.e. roughly 2K world-model forwards; memory grows with
    chunk x B x T x V logits.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 action per pass, got {chunk}.")
    batch, steps = input_ids.shape
    num_actions = model.config.num_actions
    log_prior = _log_prior(model, input_ids, attention_mask, prior)
    targets = input_ids[:, 1:]
    candidate_log_probs = []  # per chunk: (c, B, T-1) log p(x_{t+1} | x_{<=t}, ID history, a_t = k)
    for first in range(0, num_actions, chunk):
        candidates = torch.arange(first, min(first + chunk, num_actions), device=input_ids.device)
        rows = candidates.numel() * batch
        current = candidates.repeat_interleave(batch)[:, None].expand(rows, steps)
        mask = None if attention_mask is None else attention_mask.repeat(candidates.numel(), 1)
        logits = model.two_stream_logits(input_ids.repeat(candidates.numel(), 1), current, mask)[:, :-1]
        losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.repeat(candidates.numel(), 1).reshape(-1),
                                 reduction="none")
        candidate_log_probs.append(-losses.view(candidates.numel(), batch, steps - 1))
    log_probs = torch.cat(candidate_log_probs).permute(1, 2, 0)  # (B, T-1, K)
    labels = model.label_actions(input_ids, attention_mask)
    conditional = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    marginal = -(log_probs + log_prior).logsumexp(-1)
    counted = transition_mask(input_ids, attention_mask)
    return ActionInformation(conditional_nll_sum=float(conditional[counted].sum()),
                             marginal_nll_sum=float(marginal[counted].sum()), tokens=int(counted.sum()))


def forward_flops_per_token(network: nn.Module, layers: int, hidden: int, context: int) -> float:
    """Forward FLOPs per token of a transformer network at `context` tokens: 2 x the weights of its
    matrix multiplications (every nn.Linear) + attention scores and mixing, 4 x layers x hidden x context."""
    matmul = sum(module.weight.numel() for module in network.modules() if isinstance(module, nn.Linear))
    return 2.0 * matmul + 4.0 * layers * hidden * context


def flops_per_token(model: BWAreaModel | CoLAModel | ARLanguageModel, context: int) -> dict[str, float]:
    """Training and generation FLOPs per token, attention counted at `context` tokens.

    BWArea ("world" includes the action embedding's up-projection):
      train_stage1 = 3 x (world + inverse dynamics) forward   (forward + backward of both)
      train_stage2 = 3 x policy + inverse dynamics forward    (the frozen ID only labels)
      generate     = policy + world forward                   (one action, then one token)
    CoLA: the frozen LM's forward, plus the action networks (inverse dynamics, merge blocks and the LM's head,
      policy) as above.
    AR baseline:
      train    = 3 x forward
      generate = forward
    """
    if isinstance(model, BWAreaModel):
        config = model.config
        world = (forward_flops_per_token(model.world, config.world_layers, config.hidden_size, context)
                 + forward_flops_per_token(model.codebook, 0, 0, 0))
        inverse = forward_flops_per_token(model.inverse, config.inverse_layers, config.hidden_size, context)
        policy = forward_flops_per_token(model.policy, config.policy_layers, config.hidden_size, context)
        return {"train_stage1": 3 * (world + inverse), "train_stage2": 3 * policy + inverse, "generate": policy + world}
    if isinstance(model, ARLanguageModel):
        forward = forward_flops_per_token(model, model.config.num_layers, model.config.hidden_size, context)
        return {"train": 3 * forward, "generate": forward}
    if isinstance(model, CoLAModel):
        config = model.config
        lm = forward_flops_per_token(model.lm, config.num_layers, config.hidden_size, context)
        head = forward_flops_per_token(model.lm_head, 0, 0, 0)
        world = forward_flops_per_token(model.world, 0, 0, 0) + forward_flops_per_token(model.codebook, 0, 0, 0) + head
        inverse = forward_flops_per_token(model.inverse, config.inverse_layers, config.hidden_size, context)
        policy = forward_flops_per_token(model.policy, config.policy_layers, config.hidden_size, context)
        # the frozen LM runs forward only; gradients flow back through the action parts and the LM's head
        return {"train_stage1": lm + 3 * (world + inverse), "train_stage2": lm + inverse + 3 * policy,
                "generate": lm + policy + world}
    raise ValueError(f"flops_per_token counts BWAreaModel, CoLAModel and ARLanguageModel, got {type(model).__name__}.")
