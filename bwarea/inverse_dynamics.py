"""Inverse dynamics model (Wernicke's area): q(a_t | x_{<=t+1}).

A causal trunk of half the world model's depth reads the text; its feature at position t+1 has seen
exactly x_0..x_{t+1}, so shifting the features left by one gives, for every position t, a feature that
knows the token the world model must produce next. Features are projected to the code space (D) and
quantised by the shared `ActionCodebook`. The last position has no future token and gets no action.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bwarea.config import BWAreaConfig
from bwarea.transformer import Transformer


class InverseDynamics(nn.Module):
    def __init__(self, config: BWAreaConfig):
        super().__init__()
        self.trunk = Transformer(config.trunk(config.inverse_layers))
        self.to_code = nn.Linear(config.hidden_size, config.code_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> code-space features (B, T-1, D); entry t describes the step x_t -> x_{t+1}."""
        features = self.trunk(input_ids, attention_mask)
        return self.to_code(features[:, 1:])
