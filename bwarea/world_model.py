"""Language world model (Broca's area): p(x_{t+1} | x_{<=t}, a_{<=t}).

The first half of the layers read tokens only. Before layer L/2 the action embedding e(a_t) enters
the residual stream as h <- h + RMSNorm(W [h ; e(a_t)]) with W: 2H -> H; the remaining layers and the
LM head follow. Logits at position t predict token t+1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bwarea.config import BWAreaConfig
from bwarea.transformer import KVCache, RMSNorm, Transformer


class ActionInjection(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.norm = RMSNorm(hidden_size, eps)

    def forward(self, hidden: torch.Tensor, action_embeddings: torch.Tensor) -> torch.Tensor:
        mixed = self.proj(torch.cat([hidden, action_embeddings.to(hidden.dtype)], dim=-1))
        return hidden + self.norm(mixed)


class LanguageWorldModel(nn.Module):
    def __init__(self, config: BWAreaConfig):
        super().__init__()
        self.trunk = Transformer(config.trunk(config.world_layers))
        self.injection_layer = config.injection_layer
        self.inject = ActionInjection(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.trunk.embed.weight

    def hidden_states(self, input_ids: torch.Tensor, action_embeddings: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T), action_embeddings (B, T, H) for a_t at each position -> final hidden states (B, T, H)."""
        inputs = self.trunk.attention_inputs(input_ids, attention_mask, cache)
        hidden = self.trunk.run_blocks(self.trunk.embed(input_ids), inputs, stop=self.injection_layer)
        hidden = self.inject(hidden, action_embeddings)
        hidden = self.trunk.run_blocks(hidden, inputs, start=self.injection_layer)
        return self.trunk.norm(hidden)

    def forward(self, input_ids: torch.Tensor, action_embeddings: torch.Tensor,
                attention_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V); entry t predicts x_{t+1}."""
        return self.lm_head(self.hidden_states(input_ids, action_embeddings, attention_mask, cache))
