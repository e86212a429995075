"""Cognitive policy: pi(a_t | x_{<=t}), a causal trunk with a K-way action head.

The chosen index selects a row of the shared codebook (no gradient flows back from the world
model), so the policy learns only from losses on its own logits: behaviour cloning of the inverse
dynamics' labels in pretraining, and reward-driven objectives in fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bwarea.config import BWAreaConfig
from bwarea.transformer import KVCache, Transformer


class CognitivePolicy(nn.Module):
    def __init__(self, config: BWAreaConfig):
        super().__init__()
        self.trunk = Transformer(config.trunk(config.policy_layers))
        self.action_head = nn.Linear(config.hidden_size, config.num_actions, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> action logits (B, T, K); logits at t choose the action producing x_{t+1}."""
        return self.action_head(self.trunk(input_ids, attention_mask, cache))
