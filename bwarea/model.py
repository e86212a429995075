"""BWAreaModel: language world model + inverse dynamics + cognitive policy + shared action codebook.

Index alignment used everywhere: for input tokens x_0..x_{T-1}, the action at position t is a_t, the
choice that produces token x_{t+1}. Policy logits at t score a_t from x_{<=t}; the inverse dynamics
labels a_t from x_{<=t+1}; world-model logits at t predict x_{t+1} from x_{<=t} and a_{<=t}.

Modes:
- `stage1`: world model under inverse-dynamics actions (teacher forcing) -> logits, VQ losses,
  action indices and code-usage statistics (pretraining stage 1);
- `policy_logits`: pi(a_t | x_{<=t}) for every position;
- `label_actions`: the inverse dynamics' action for every position of any text;
- `action_log_probs`: log pi of given actions (e.g. ID labels, or actions from a rollout);
- `world_logits`: world model driven by any given action sequence;
- `two_stream_logits`: world logits at every t under history a_{<t} from the inverse dynamics and the
  current action a_t given per position — in one pass (see below);
- `simulated_logits` ("all-policy" simulated LLM): the world model driven by the policy's actions at
  every position, history included;
- `two_stream_simulated_logits` ("two-stream" simulated LLM): inverse-dynamics history, policy action
  at the current step — the conditionals cached generation scores for the first token after a prompt;
- `generate` (bwarea.generation): policy picks actions, world model emits tokens.

Two streams in one pass: the world model's lower half (layers < L/2) does not see actions, so it runs
once. The upper half runs on a sequence of length 2T-1: stream 1 holds positions 0..T-2 with the
inverse-dynamics actions injected (the history), stream 2 positions 0..T-1 with the current actions.
Stream-1 queries are causal over stream 1; stream-2 query t sees stream-1 keys < t and its own key
only. Both streams use rotary position t, so stream-2 position t computes exactly what a decoder
with the history cached computes for x_{t+1} given a_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bwarea.checkpoint import PretrainedModel
from bwarea.codebook import ActionCodebook, CodeUsage, code_usage
from bwarea.config import BWAreaConfig
from bwarea.cross_entropy import linear_cross_entropy
from bwarea.generation import DecodeStep, GenerationOutput, PromptActions, choose, generate
from bwarea.inverse_dynamics import InverseDynamics
from bwarea.policy import CognitivePolicy
from bwarea.transformer import AttentionInputs, KVCache, init_weights
from bwarea.world_model import LanguageWorldModel


@dataclass
class Stage1Output:
    logits: torch.Tensor | None    # (B, T-1, V) world-model logits at positions 0..T-2 (if requested)
    lm_loss: torch.Tensor          # next-token cross-entropy over counted positions
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    actions: torch.Tensor          # (B, T-1) inverse-dynamics action per position
    features: torch.Tensor         # (B, T-1, D) code-space features (for dead-code restarts)
    target_mask: torch.Tensor      # (B, T-1) positions whose target token is real
    usage: CodeUsage

    @property
    def loss(self) -> torch.Tensor:
        return self.lm_loss + self.codebook_loss + self.commitment_loss


def transition_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T-1) True where both x_t and x_{t+1} are real tokens (the step t -> t+1 exists)."""
    if attention_mask is None:
        return torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
    real = attention_mask.bool()
    return real[:, 1:] & real[:, :-1]


def chosen_log_probs(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log-softmax of `logits` (..., K) at `actions` (...), and the entropy of each distribution."""
    log_probs = logits.float().log_softmax(-1)
    chosen = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return chosen, -(log_probs.exp() * log_probs).sum(-1)


def next_token_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None, return_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of hidden states (B, T-1, H) at positions 0..T-2 against tokens 1..T-1.

    Uses the fused chunked head + loss unless the logits themselves are wanted.
    """
    targets, mask = input_ids[:, 1:], transition_mask(input_ids, attention_mask)
    if not return_logits:
        return linear_cross_entropy(hidden, lm_head.weight, targets, mask), None
    logits = lm_head(hidden)
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    weights = mask.reshape(-1).float()
    return (losses * weights).sum() / weights.sum().clamp(min=1), logits


def two_stream_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 2T-1, 2T-1) mask over [stream 1: positions 0..T-2 ; stream 2: positions 0..T-1].

    token_mask (B, T) marks real tokens. Every query sees the real stream-1 keys at earlier positions
    and itself — which is causal attention for stream 1 and "history plus own slot" for stream 2.
    Seeing itself also keeps padded queries finite (their outputs are never used).
    """
    steps = token_mask.shape[1]
    positions = torch.cat([torch.arange(steps - 1), torch.arange(steps)]).to(token_mask.device)
    is_history = torch.arange(2 * steps - 1, device=token_mask.device) < steps - 1
    earlier_history = is_history[None, :] & (positions[None, :] < positions[:, None])
    key_real = torch.cat([token_mask[:, :-1], token_mask], dim=1)
    own_slot = torch.eye(2 * steps - 1, dtype=torch.bool, device=token_mask.device)
    return ((earlier_history[None] & key_real[:, None, :]) | own_slot[None])[:, None]


class BWAreaModel(PretrainedModel):
    config_class = BWAreaConfig

    def __init__(self, config: BWAreaConfig):
        super().__init__(config)
        self.world = LanguageWorldModel(config)
        self.inverse = InverseDynamics(config)
        self.policy = CognitivePolicy(config)
        self.codebook = ActionCodebook(config)
        for network, depth in ((self.world, config.world_layers), (self.inverse, config.inverse_layers),
                               (self.policy, config.policy_layers)):
            init_weights(network, config.initializer_range, depth)
        init_weights(self.codebook.up, config.initializer_range, 1)

    # --- parameter groups -------------------------------------------------------------------
    def stage1_parameters(self) -> list[torch.nn.Parameter]:
        """World model, inverse dynamics and codebook (trained in stage 1, frozen afterwards)."""
        return [*self.world.parameters(), *self.inverse.parameters(), *self.codebook.parameters()]

    def policy_module(self) -> torch.nn.Module:
        """The module that holds the cognitive policy (its parameters are policy_parameters())."""
        return self.policy

    def policy_parameters(self) -> list[torch.nn.Parameter]:
        """The cognitive policy: the only part trained in stage 2 and in reward fine-tuning."""
        return list(self.policy.parameters())

    # --- modes ----------------------------------------------------------------------------
    def stage1(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               return_logits: bool = False) -> Stage1Output:
        """Teacher forcing: the world model reads x_0..x_{T-2} under the inverse dynamics' actions."""
        target_mask = transition_mask(input_ids, attention_mask)
        features = self.inverse(input_ids, attention_mask)
        quantized = self.codebook.quantize(features, target_mask)
        world_mask = None if attention_mask is None else attention_mask[:, :-1]
        hidden = self.world.hidden_states(input_ids[:, :-1], self.codebook.embed_codes(quantized.codes), world_mask)
        lm_loss, logits = next_token_loss(hidden, self.world.lm_head, input_ids, attention_mask, return_logits)
        return Stage1Output(
            logits=logits, lm_loss=lm_loss, codebook_loss=quantized.codebook_loss,
            commitment_loss=quantized.commitment_loss, actions=quantized.indices, features=features.detach(),
            target_mask=target_mask, usage=code_usage(quantized.indices, self.config.num_actions, target_mask),
        )

    def label_actions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T-1) inverse-dynamics action a_t for every step x_t -> x_{t+1} of the text."""
        return self.codebook.nearest(self.inverse(input_ids, attention_mask))

    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, K) action logits; entry t scores a_t given x_{<=t}."""
        return self.policy(input_ids, attention_mask)

    def action_log_probs(self, input_ids: torch.Tensor, actions: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a_t | x_{<=t}) and the policy entropy at every position.

        `actions` is (B, T) or (B, T-1) (the last position has no successor and is then skipped).
        Returns two (B, actions.shape[1]) tensors.
        """
        return chosen_log_probs(self.policy_logits(input_ids, attention_mask)[:, : actions.shape[1]], actions)

    def world_logits(self, input_ids: torch.Tensor, actions: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """World-model logits (B, T, V) for input_ids (B, T) under the given action per position (B, T) or (T,)."""
        actions = actions.expand(input_ids.shape) if actions.dim() == 1 else actions
        return self.world(input_ids, self.codebook.embed(actions), attention_mask)

    def two_stream_logits(self, input_ids: torch.Tensor, current_actions: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """World-model logits (B, T, V); entry t predicts x_{t+1} from x_{<=t} under a_{<t} = the inverse
        dynamics' labels and a_t = current_actions[:, t] ((B, T) or (T,)). One pass (module docstring).

        The last position has no label, which no entry needs: entry t reads history labels < t only.
        """
        current_actions = current_actions.expand(input_ids.shape) if current_actions.dim() == 1 else current_actions
        token_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        history_actions = self.label_actions(input_ids, attention_mask)
        world, steps = self.world, input_ids.shape[1]
        lower = world.trunk.run_blocks(world.trunk.embed(input_ids), world.trunk.attention_inputs(input_ids, attention_mask),
                                       stop=world.injection_layer)
        streams = torch.cat([world.inject(lower[:, :-1], self.codebook.embed(history_actions)),
                             world.inject(lower, self.codebook.embed(current_actions))], dim=1)
        positions = (token_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = world.trunk.rope(torch.cat([positions[:, :-1], positions], dim=1))
        inputs = AttentionInputs(cos, sin, two_stream_mask(token_mask), causal=False)
        upper = world.trunk.run_blocks(streams, inputs, start=world.injection_layer)
        return world.lm_head(world.trunk.norm(upper[:, steps - 1:]))

    def simulated_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         temperature: float = 0.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The all-policy simulated LLM under teacher forcing: policy actions (greedy if temperature == 0,
        else sampled at that temperature) drive the world model at every position, history included.
        Returns (logits (B, T, V), actions (B, T))."""
        actions = choose(self.policy_logits(input_ids, attention_mask), temperature, generator=generator)
        return self.world_logits(input_ids, actions, attention_mask), actions

    def two_stream_simulated_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                                    temperature: float = 0.0, generator: torch.Generator | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-stream simulated LLM: entry t scores x_{t+1} under inverse-dynamics history and the
        policy's action a_t (greedy if temperature == 0, else sampled) — what generation scores for the
        first token after the prompt x_{<=t}. Returns (logits (B, T, V), actions (B, T))."""
        actions = choose(self.policy_logits(input_ids, attention_mask), temperature, generator=generator)
        return self.two_stream_logits(input_ids, actions, attention_mask), actions

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> GenerationOutput:
        """Simulate an LLM: the policy picks an action per token, the world model speaks (options: `generate`)."""
        return generate(self, input_ids, attention_mask, **options)

    def decoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int,
                prompt_actions: PromptActions = "inverse") -> "_BWAreaDecoder":
        return _BWAreaDecoder(self, input_ids, attention_mask, capacity, prompt_actions)


def _policy_logits(model: BWAreaModel, tokens: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """(B, T, K) action logits of the new tokens."""
    return model.policy(tokens, mask, cache)


def _world_logits(model: BWAreaModel, tokens: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                  actions: torch.Tensor) -> torch.Tensor:
    """(B, V) world-model logits at the newest position, the new tokens carrying `actions` (B, T)."""
    world = model.world
    hidden = world.hidden_states(tokens, model.codebook.embed(actions), mask, cache)
    return world.lm_head(hidden[:, -1])


class _BWAreaDecoder:
    """Cached decoding: the policy chooses a_t from x_{<=t}, then the world model emits x_{t+1}.

    The prompt's own positions (which already have their next tokens) are labelled, for the world
    model, by the inverse dynamics (prompt_actions="inverse": the world model reads the prompt as the
    text it is) or by the policy (prompt_actions="policy": the first `action_logits` call then returns
    the logits of every prompt position, and generation chooses all of them). The last prompt
    position's action is always chosen by the policy.
    """

    def __init__(self, model: BWAreaModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int,
                 prompt_actions: PromptActions):
        self.model = model
        self.policy_cache = model.policy.trunk.new_cache(input_ids.shape[0], capacity)
        self.world_cache = model.world.trunk.new_cache(input_ids.shape[0], capacity)
        self.prompt_labels = model.label_actions(input_ids, attention_mask) if prompt_actions == "inverse" else None
        self.choose_prompt = prompt_actions == "policy"
        self.policy_step, self.world_step = DecodeStep(_policy_logits), DecodeStep(_world_logits)

    def make_static(self, compile_mode: str | None) -> None:
        self.policy_cache.make_static(self.model.policy)
        self.world_cache.make_static(self.model.world)
        for step in (self.policy_step, self.world_step):
            step.compile(compile_mode)

    def action_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.policy_step(self.model, tokens, mask, self.policy_cache)
        if self.choose_prompt:
            self.choose_prompt = False
            return logits
        return logits[:, -1:]

    def token_logits(self, tokens: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.prompt_labels is not None:
            actions = torch.cat([self.prompt_labels, actions], dim=1)
            self.prompt_labels = None
        return self.world_step(self.model, tokens, mask, self.world_cache, actions)
