"""The autoregressive baseline: a plain Llama-style causal LM of the world model's shape.

It shares the transformer implementation with BWArea and offers the same interface to training and
fine-tuning code: for the AR model the "action" at position t is simply the token x_{t+1}.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bwarea.checkpoint import PretrainedModel
from bwarea.config import ARConfig
from bwarea.generation import DecodeStep, GenerationOutput, PromptActions, generate
from bwarea.model import chosen_log_probs, next_token_loss
from bwarea.transformer import KVCache, Transformer, init_weights


class ARLanguageModel(PretrainedModel):
    config_class = ARConfig

    def __init__(self, config: ARConfig):
        super().__init__(config)
        self.trunk = Transformer(config.trunk(config.num_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self, config.initializer_range, config.num_layers)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.trunk.embed.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> next-token logits (B, T, V)."""
        return self.lm_head(self.trunk(input_ids, attention_mask, cache))

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token cross-entropy over the real transitions of the batch."""
        hidden = self.trunk(input_ids[:, :-1], None if attention_mask is None else attention_mask[:, :-1])
        return next_token_loss(hidden, self.lm_head, input_ids, attention_mask, return_logits=False)[0]

    def policy_module(self) -> nn.Module:
        """The module that holds the policy: for the AR model, the whole language model."""
        return self

    def policy_parameters(self) -> list[nn.Parameter]:
        """All weights: for the AR model the policy is the whole language model."""
        return list(self.parameters())

    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V) logits of the action at t, which for the AR model is the next token."""
        return self(input_ids, attention_mask)

    def action_log_probs(self, input_ids: torch.Tensor, actions: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(a_t | x_{<=t}) with a_t = the token at t+1, and the entropy of each next-token distribution."""
        return chosen_log_probs(self.policy_logits(input_ids, attention_mask)[:, : actions.shape[1]], actions)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> GenerationOutput:
        """Cached sampling; `actions` in the output are the generated tokens (options: `generate`)."""
        return generate(self, input_ids, attention_mask, **options)

    def decoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int,
                prompt_actions: PromptActions = "inverse") -> "_ARDecoder":
        """`prompt_actions` is accepted for the shared generation interface and ignored: the AR model
        has no latent actions, its prompt is just read."""
        return _ARDecoder(self, input_ids.shape[0], capacity)


def _next_token_logits(model: ARLanguageModel, tokens: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """(B, 1, V) logits at the newest position."""
    return model.lm_head(model.trunk(tokens, mask, cache)[:, -1:])


class _ARDecoder:
    def __init__(self, model: ARLanguageModel, batch_size: int, capacity: int):
        self.model = model
        self.cache = model.trunk.new_cache(batch_size, capacity)
        self.step = DecodeStep(_next_token_logits)

    def make_static(self, compile_mode: str | None) -> None:
        self.cache.make_static(self.model.trunk)
        self.step.compile(compile_mode)

    def action_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.step(self.model, tokens, mask, self.cache)

    def token_logits(self, tokens: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> None:
        return None
