"""The action codebook: K latent cognitive actions shared by the inverse dynamics and the policy.

The inverse dynamics quantises its code-space feature z to the nearest codebook row e_k
(straight-through estimator: forward uses e_k, backward passes the gradient to z). The chosen row
goes through an up-projection D -> H and is injected into the world model. The policy path picks
an index directly and reads the same row and up-projection.

Two ways to learn the codebook (config.codebook_update):
- "loss": codebook term ||sg(z) - e||^2 plus commitment term beta * ||z - sg(e)||^2;
- "ema":  rows are exponential moving averages of the features assigned to them (Laplace-smoothed
          counts); only the commitment term is back-propagated.
Codebook collapse is the main failure mode, so per-code usage is tracked and codes whose usage
falls below a threshold can be restarted from recent features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from bwarea.config import BWAreaConfig


@dataclass
class Quantized:
    indices: torch.Tensor          # (..., ) long, chosen action per position
    codes: torch.Tensor            # (..., D) straight-through quantised features
    codebook_loss: torch.Tensor    # scalar, zero in EMA mode
    commitment_loss: torch.Tensor  # scalar, already multiplied by beta


@dataclass
class CodeUsage:
    alive_codes: int        # distinct codes used in the batch
    entropy: float          # entropy (nats) of the batch's code histogram; log K when uniform
    perplexity: float       # exp(entropy): the effective number of codes in use
    largest_share: float    # share of the most used code: 1/K when uniform, 1 when collapsed


def code_usage(indices: torch.Tensor, num_codes: int, mask: torch.Tensor | None = None) -> CodeUsage:
    """Usage statistics of a batch of code indices (positions where `mask` is False are ignored)."""
    chosen = indices[mask] if mask is not None else indices.reshape(-1)
    return usage_from_counts(torch.bincount(chosen, minlength=num_codes))


def usage_from_counts(counts: torch.Tensor) -> CodeUsage:
    """Usage statistics of a histogram of code assignments (K,)."""
    counts = counts.float()
    probs = counts / counts.sum().clamp(min=1)
    entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    return CodeUsage(alive_codes=int((counts > 0).sum()), entropy=entropy, perplexity=math.exp(entropy),
                     largest_share=float(probs.max()) if counts.numel() else 0.0)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum across processes when running distributed, so every replica keeps the same codebook."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


class ActionCodebook(nn.Module):
    def __init__(self, config: BWAreaConfig):
        super().__init__()
        self.num_codes = config.num_actions
        self.code_dim = config.code_dim
        self.update = config.codebook_update
        self.beta = config.commitment_beta
        self.ema_decay = config.ema_decay
        self.usage_decay = config.usage_decay
        self.dead_threshold = config.dead_code_threshold / config.num_actions

        codebook = torch.randn(config.num_actions, config.code_dim) / math.sqrt(config.code_dim)
        if self.update == "ema":
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_counts", torch.ones(config.num_actions))
            self.register_buffer("ema_sums", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # share of assignments per code, averaged over training steps; starts uniform
        self.register_buffer("usage", torch.full((config.num_actions,), 1.0 / config.num_actions))
        self.up = nn.Linear(config.code_dim, config.hidden_size, bias=False)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row (squared Euclidean distance) for each feature z (..., D)."""
        flat = z.reshape(-1, self.code_dim).float()
        book = self.codebook.float()
        distances = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(-1)[None]
        return distances.argmin(-1).view(z.shape[:-1])

    def quantize(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> Quantized:
        """Quantise features z (..., D); `mask` (...) marks positions that count for losses and statistics."""
        indices = self.nearest(z)
        chosen = self.codebook[indices].to(z.dtype)
        keep = torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device) if mask is None else mask.bool()
        denominator = keep.sum().clamp(min=1) * self.code_dim
        weights = keep.unsqueeze(-1).to(z.dtype)
        commitment = self.beta * ((z - chosen.detach()).pow(2) * weights).sum() / denominator
        if self.update == "loss":
            codebook_loss = ((chosen - z.detach()).pow(2) * weights).sum() / denominator
        else:
            codebook_loss = z.new_zeros(())
        if self.training:
            self._track(z.detach(), indices, keep)
        codes = z + (chosen - z).detach()
        return Quantized(indices, codes, codebook_loss, commitment)

    @torch.no_grad()
    def _track(self, z: torch.Tensor, indices: torch.Tensor, keep: torch.Tensor) -> None:
        chosen = indices[keep]
        counts = _all_reduce_sum(torch.bincount(chosen, minlength=self.num_codes).float())
        self.usage.mul_(self.usage_decay).add_((1 - self.usage_decay) * counts / counts.sum().clamp(min=1))
        if self.update == "ema":
            sums = torch.zeros_like(self.ema_sums).index_add_(0, chosen, z[keep].float())
            sums = _all_reduce_sum(sums)
            self.ema_counts.mul_(self.ema_decay).add_((1 - self.ema_decay) * counts)
            self.ema_sums.mul_(self.ema_decay).add_((1 - self.ema_decay) * sums)
            total = self.ema_counts.sum()
            smoothed = (self.ema_counts + 1e-5) / (total + self.num_codes * 1e-5) * total
            self.codebook.copy_(self.ema_sums / smoothed[:, None])

    def dead_codes(self) -> torch.Tensor:
        """Indices of codes whose average share of assignments is below the dead-code threshold."""
        return (self.usage < self.dead_threshold).nonzero().flatten()

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Move every dead code onto a randomly drawn recent feature from `z` (N, D); return how many moved.

        Draws are made on the first process and broadcast, so all replicas restart identically.
        """
        dead = self.dead_codes()
        if dead.numel() == 0 or z.numel() == 0:
            return 0
        flat = z.reshape(-1, self.code_dim).float()
        picks = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device="cpu").to(flat.device)
        replacements = flat[picks] + 1e-3 * flat.std() * torch.randn(dead.numel(), self.code_dim, generator=generator, device="cpu").to(flat.device)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(replacements, src=0)
        self.codebook.data[dead] = replacements.to(self.codebook.dtype)
        self.usage[dead] = 1.0 / self.num_codes
        if self.update == "ema":
            self.ema_counts[dead] = 1.0
            self.ema_sums[dead] = replacements
        return int(dead.numel())

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Action embeddings (..., H) for chosen indices: codebook row, then the up-projection."""
        return self.up(self.codebook[indices].detach())

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Action embeddings (..., H) from straight-through quantised codes (keeps gradients to the ID)."""
        return self.up(codes)
