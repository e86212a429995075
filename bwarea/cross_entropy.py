"""Next-token cross-entropy fused with the LM head, computed in chunks of positions.

The plain path materialises logits (N, V), their log-softmax and a gradient of the same size — three
large buffers that dominate small models on CPU and the memory of large-vocabulary models on GPU.
Here each chunk of positions computes its logits, its loss and, right away, its share of the
gradients of the hidden states and of the head weight; only those gradients are kept for backward.

For a chunk with hidden states h (n, H), head weight W (V, H), targets y and weights w:
    logits = h W^T,  loss = sum_i w_i (logsumexp(logits_i) - logits_i[y_i])
    dlogits = w * (softmax(logits) - onehot(y)),  dh = dlogits W,  dW = dlogits^T h
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk_size):
        ctx.weight_dtype = weight.dtype
        head = weight.to(hidden.dtype)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if wants_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, y, w = hidden[rows], targets[rows], weights[rows]
            logits = (h @ head.t()).float()
            log_normaliser = logits.logsumexp(-1)
            total += ((log_normaliser - logits.gather(-1, y[:, None]).squeeze(-1)) * w).sum()
            if not wants_grad:
                continue
            grad_logits = logits.sub_(log_normaliser[:, None]).exp_()
            grad_logits[torch.arange(h.shape[0], device=h.device), y] -= 1
            grad_logits = grad_logits.mul_(w[:, None]).to(h.dtype)
            grad_hidden[rows] = grad_logits @ head
            grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None,
            (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None,
            None, None, None,
        )


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         mask: torch.Tensor | None = None, chunk_size: int = 256) -> torch.Tensor:
    """Mean cross-entropy of logits = hidden @ weight.T against `targets` over positions where `mask` is True.

    hidden (..., H), weight (V, H), targets (...), mask (...) bool. Under autocast the matmuls run in
    the autocast dtype (as nn.Linear would) while softmax statistics and the weight gradient stay fp32.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    targets = targets.reshape(-1)
    weights = torch.ones(targets.shape, device=hidden.device) if mask is None else mask.reshape(-1).float()
    weights = weights / weights.sum().clamp(min=1)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, weights, chunk_size)
