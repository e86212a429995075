"""A causal transformer with a scalar head: the Bradley-Terry reward model and the PPO value model.

`forward` returns one scalar per position, (B, T): a value V(x_{<=t}) for PPO, and `score` takes the
last position (prompts are left padded, so it is the last real token) as a sequence reward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from bwarea.checkpoint import PretrainedModel
from bwarea.config import BaseModelConfig
from bwarea.transformer import Transformer, init_weights


@dataclass
class ScalarModelConfig(BaseModelConfig):
    num_layers: int = 2

    model_type: str = dataclasses.field(default="bwarea-scalar", init=False, repr=False)


class ScalarModel(PretrainedModel):
    config_class = ScalarModelConfig

    def __init__(self, config: ScalarModelConfig):
        super().__init__(config)
        self.trunk = Transformer(config.trunk(config.num_layers))
        self.head = nn.Linear(config.hidden_size, 1)
        init_weights(self, config.initializer_range, config.num_layers)

    @classmethod
    def from_trunk(cls, trunk: Transformer, config: BaseModelConfig) -> "ScalarModel":
        """A scalar model whose trunk starts as a copy of `trunk` (e.g. a policy's), head zero-initialised."""
        fields = {name: getattr(config, name) for name in BaseModelConfig.field_names()}
        model = cls(ScalarModelConfig(num_layers=trunk.config.num_layers, **fields))
        model.trunk.load_state_dict(trunk.state_dict())
        nn.init.zeros_(model.head.weight)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, T) scalar per position."""
        return self.head(self.trunk(input_ids, attention_mask)).squeeze(-1).float()

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) scalar of each left-padded sequence, read at its last token."""
        return self(input_ids, attention_mask)[:, -1]
