"""CoLA: latent actions on top of a frozen language model (LAMDA-RL/CoLA, ICML 2025).

The BWArea recipe with the language model kept as it is. A frozen LM reads the text; its residual
stream before the final norm is the state s_t (B, T, H). Small networks learn K latent actions on it:

- inverse dynamics q(a_t | s_{<=t+1}): causal blocks over the states, shifted left by one position so the
  logits for a_t have seen exactly x_0..x_{t+1}, then Linear(H -> K). Training picks a_t as a
  straight-through Gumbel-softmax one-hot (temperature `gumbel_tau`), anything else the argmax;
  `entropy_coef` x the negative entropy of the ID's softmax joins the stage-1 loss as a bonus that
  keeps the actions diverse.
- codebook: Linear(K -> H) of the one-hot, e(a_t).
- world model p(x_{t+1} | x_{<=t}, a_t): `merge_layers` residual SwiGLU blocks
  s <- s + W_down(silu(W_gate u) * W_up u), u = [RMSNorm(s) ; e(a_t)] (2H -> merge width -> H), then
  the LM's own final norm and head. W_down starts at zero, so before training the world model *is* the
  LM, whatever the action.
- policy pi(a_t | x_{<=t}): causal blocks over the states, then Linear(H -> K).

Why the state is taken before the LM's final norm: the LM computes logits = head(norm(s)). Adding the
merge blocks' output to s itself gives head(norm(s + delta)), which is the LM exactly when delta = 0.
Adding it to the normalised features instead would need a second normalisation (norm(norm(s)) is not
norm(s) once the norm has a learned gain) or none at all (the merged features would no longer be
normalised) — either way the world model would start away from the LM. The inverse dynamics and the
policy read norm(s), the features the LM head reads: a pre-norm residual stream can be huge in a real
LM, and small blocks learn better on features of unit scale. Each merge block normalises s for the
same reason before reading it, while its output is still added to the raw stream.

Index alignment is BWArea's (bwarea.model): for tokens x_0..x_{T-1}, a_t produces x_{t+1}; policy
logits at t see x_{<=t}; the ID's action at t sees x_{<=t+1} (the last position gets none); world
logits at t predict x_{t+1}. Unlike BWArea's world model, CoLA's is per position: the logits at t
depend on the text x_{<=t} and on a_t only, never on earlier actions.

Training: stage 1 trains inverse dynamics, codebook and merge blocks on the LM's next-token loss;
stage 2 trains the policy by behaviour cloning of the frozen ID's argmax actions; reward fine-tuning
trains the policy only. The LM trunk always runs without autograd, and its final norm and head are
created frozen (`frozen_modules` lists what each stage keeps frozen).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bwarea.autoregressive import ARLanguageModel
from bwarea.checkpoint import PretrainedModel
from bwarea.codebook import code_usage
from bwarea.config import ARConfig, BaseModelConfig, TransformerConfig
from bwarea.generation import DecodeStep, GenerationOutput, PromptActions, choose, generate
from bwarea.model import Stage1Output, chosen_log_probs, next_token_loss, transition_mask
from bwarea.transformer import AttentionInputs, Block, KVCache, RMSNorm, Transformer, init_weights


@dataclass
class CoLAConfig(BaseModelConfig):
    """A frozen LM (the shared fields plus num_layers) and the latent-action networks on its states.

    num_layers: depth of the frozen language model.
    num_actions: K, the number of latent actions.
    inverse_layers: transformer blocks of the inverse dynamics.
    policy_layers: transformer blocks of the policy.
    merge_layers: residual SwiGLU merge blocks of the world model.
    merge_intermediate_size: inner width of each merge block; None = the LM's intermediate_size.
    gumbel_tau: temperature of the inverse dynamics' Gumbel-softmax in stage-1 training.
    entropy_coef: weight of the negative entropy of the inverse dynamics' softmax in the stage-1 loss.
    """

    num_layers: int = 4
    num_actions: int = 64
    inverse_layers: int = 4
    policy_layers: int = 8
    merge_layers: int = 2
    merge_intermediate_size: int | None = None
    gumbel_tau: float = 2.0
    entropy_coef: float = 0.001

    model_type: str = dataclasses.field(default="bwarea-cola", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_layers", "inverse_layers", "policy_layers", "merge_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.num_actions < 2:
            raise ValueError(f"num_actions must be at least 2 for a latent choice to exist, got {self.num_actions}.")
        if self.merge_intermediate_size is not None and self.merge_intermediate_size < 1:
            raise ValueError(f"merge_intermediate_size must be positive or None (the LM's intermediate_size), "
                             f"got {self.merge_intermediate_size}.")
        if not self.gumbel_tau > 0:
            raise ValueError(f"gumbel_tau must be positive, got {self.gumbel_tau}.")
        if not self.entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be non-negative (it weighs an entropy bonus), "
                             f"got {self.entropy_coef}.")

    @property
    def merge_width(self) -> int:
        return self.intermediate_size if self.merge_intermediate_size is None else self.merge_intermediate_size


def straight_through_one_hot(logits: torch.Tensor, tau: float, sample: bool) -> torch.Tensor:
    """One-hot (..., K) choice from `logits` whose gradient is that of softmax(scores / tau).

    sample=True adds Gumbel(0, 1) noise to the scores first (a Gumbel-softmax draw), else the choice is
    the argmax. The forward value is exactly one-hot: the soft term enters as soft - sg(soft) = 0.
    """
    scores = logits.float()
    if sample:
        scores = scores - torch.empty_like(scores).exponential_().log()  # Gumbel(0, 1) = -log Exp(1)
    soft = (scores / tau).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


class ActionTransformer(nn.Module):
    """Causal blocks over a sequence of LM features (B, T, H), a final RMSNorm and Linear(H -> K)."""

    def __init__(self, config: TransformerConfig, num_actions: int):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.action_head = nn.Linear(config.hidden_size, num_actions, bias=False)

    def forward(self, features: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        """features (B, T, H) -> action logits (B, T, K). `inputs` come from the LM trunk's `attention_inputs`
        (every stack shares its head size and rotary tables); a cache in them must be this stack's own."""
        hidden = features
        for layer, block in enumerate(self.blocks):
            hidden = block(hidden, inputs, layer)
        return self.action_head(self.norm(hidden))


class MergeBlock(nn.Module):
    """s <- s + W_down(silu(W_gate u) * W_up u) with u = [RMSNorm(s) ; e(a)]."""

    def __init__(self, hidden_size: int, intermediate_size: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)
        self.gate_up = nn.Linear(2 * hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, state: torch.Tensor, action_embeddings: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.norm(state), action_embeddings.to(state.dtype)], dim=-1)
        gate, up = self.gate_up(mixed).chunk(2, dim=-1)
        return state + self.down(F.silu(gate) * up)


class MergeWorldModel(nn.Module):
    """The action-dependent part of CoLA's world model; the LM's final norm and head follow it."""

    def __init__(self, config: CoLAConfig):
        super().__init__()
        self.merges = nn.ModuleList(MergeBlock(config.hidden_size, config.merge_width, config.rms_norm_eps)
                                    for _ in range(config.merge_layers))

    def forward(self, states: torch.Tensor, action_embeddings: torch.Tensor) -> torch.Tensor:
        """states (B, T, H) before the LM's final norm, action embeddings (B, T, H) -> merged states (B, T, H)."""
        for merge in self.merges:
            states = merge(states, action_embeddings)
        return states


class CoLAModel(PretrainedModel):
    """Frozen LM (`lm`, `lm_head`) + inverse dynamics, codebook, merge-block world model and policy.

    Same interface as bwarea.model.BWAreaModel, so training, generation, reward fine-tuning and
    evaluation drive it unchanged.
    """

    config_class = CoLAConfig

    def __init__(self, config: CoLAConfig):
        super().__init__(config)
        self.lm = Transformer(config.trunk(config.num_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.inverse = ActionTransformer(config.trunk(config.inverse_layers), config.num_actions)
        self.codebook = nn.Linear(config.num_actions, config.hidden_size, bias=False)
        self.world = MergeWorldModel(config)
        self.policy = ActionTransformer(config.trunk(config.policy_layers), config.num_actions)
        std = config.initializer_range
        for network, depth in ((self.lm, config.num_layers), (self.lm_head, 1), (self.inverse, config.inverse_layers),
                               (self.codebook, 1), (self.world, config.merge_layers), (self.policy, config.policy_layers)):
            init_weights(network, std, depth)
        for merge in self.world.merges:
            nn.init.zeros_(merge.down.weight)  # the world model starts as the LM
        if config.tie_word_embeddings:
            self.lm_head.weight = self.lm.embed.weight
        self.lm.requires_grad_(False)
        self.lm_head.requires_grad_(False)

    @classmethod
    def from_lm(cls, lm: ARLanguageModel, *, num_actions: int = 64, **config_overrides) -> "CoLAModel":
        """CoLA on a copy of `lm`'s trunk and head, with fresh action networks, in the LM's dtype and device.

        config_overrides may set CoLA's own fields (inverse_layers, policy_layers, merge_layers,
        merge_intermediate_size, gumbel_tau, entropy_coef); everything else comes from lm.config.
        """
        if not isinstance(lm, ARLanguageModel):
            raise ValueError(f"from_lm needs a bwarea.ARLanguageModel, got {type(lm).__name__}; "
                             "bwarea.pretrained_lm.load_causal_lm turns a Hugging Face LM into one.")
        own_fields = CoLAConfig.field_names() - ARConfig.field_names()
        foreign = sorted(set(config_overrides) - own_fields)
        if foreign:
            raise ValueError(f"from_lm cannot override {foreign[0]!r}: the LM's shape and settings come from lm.config; "
                             f"overridable fields are {sorted(own_fields - {'num_actions'})}.")
        shared = {name: getattr(lm.config, name) for name in ARConfig.field_names()}
        model = cls(CoLAConfig(**shared, num_actions=num_actions, **config_overrides))
        model.lm.load_state_dict(lm.trunk.state_dict())
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
        return model.to(device=lm.lm_head.weight.device, dtype=lm.lm_head.weight.dtype)

    # --- parameter groups -------------------------------------------------------------------
    def stage1_parameters(self) -> list[nn.Parameter]:
        """Inverse dynamics, codebook and merge blocks (trained in stage 1, frozen afterwards)."""
        return [*self.inverse.parameters(), *self.codebook.parameters(), *self.world.parameters()]

    def policy_module(self) -> nn.Module:
        """The module that holds the policy (its parameters are policy_parameters())."""
        return self.policy

    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy: the only part trained in stage 2 and in reward fine-tuning."""
        return list(self.policy.parameters())

    def frozen_modules(self, stage: Literal["world", "policy"]) -> list[nn.Module]:
        """Modules a trainer keeps in eval mode with requires_grad False during `stage`.

        "world" (stage 1): the LM and the policy. "policy" (stage 2 and reward fine-tuning): everything but
        the policy. Eval mode matters for the inverse dynamics: in training mode it samples Gumbel noise.
        """
        frozen_lm = [self.lm, self.lm_head]
        if stage == "world":
            return [*frozen_lm, self.policy]
        if stage == "policy":
            return [*frozen_lm, self.inverse, self.codebook, self.world]
        raise ValueError(f"stage must be 'world' (stage 1) or 'policy' (stage 2 and reward fine-tuning), got {stage!r}.")

    # --- building blocks ----------------------------------------------------------------------
    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: KVCache | None = None) -> tuple[torch.Tensor, AttentionInputs]:
        """The frozen LM's residual stream before its final norm (B, T, H), and the attention inputs
        (positions, rotary tables, mask) that the action networks reuse when `cache` is None."""
        inputs = self.lm.attention_inputs(input_ids, attention_mask, cache)
        with torch.no_grad():
            return self.lm.run_blocks(self.lm.embed(input_ids), inputs), inputs

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Action embeddings (..., H) of action indices (...)."""
        return self.codebook(F.one_hot(actions, self.config.num_actions).to(self.codebook.weight.dtype))

    def _world_hidden(self, states: torch.Tensor, action_embeddings: torch.Tensor) -> torch.Tensor:
        """Merge blocks, then the LM's final norm: hidden states (B, T, H) for the LM head."""
        return self.lm.norm(self.world(states, action_embeddings))

    def _inverse_logits(self, states: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        # the blocks' output at t+1 has seen s_0..s_{t+1}: shifted left it scores a_t
        return self.inverse(self.lm.norm(states), inputs)[:, 1:]

    # --- modes ----------------------------------------------------------------------------
    def stage1(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               return_logits: bool = False) -> Stage1Output:
        """Teacher forcing: the world model reads x_0..x_{T-2} under the inverse dynamics' actions.

        `codebook_loss` is zero and `commitment_loss` holds the entropy bonus, so `loss` is CoLA's stage-1
        loss; `features` are the inverse dynamics' logits (B, T-1, K).
        """
        target_mask = transition_mask(input_ids, attention_mask)
        states, inputs = self.states(input_ids, attention_mask)
        logits = self._inverse_logits(states, inputs)
        one_hot = straight_through_one_hot(logits, self.config.gumbel_tau, sample=self.inverse.training)
        action_embeddings = self.codebook(one_hot.to(self.codebook.weight.dtype))
        hidden = self._world_hidden(states[:, :-1], action_embeddings)
        lm_loss, token_logits = next_token_loss(hidden, self.lm_head, input_ids, attention_mask, return_logits)
        log_probs = logits.float().log_softmax(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        mean_entropy = (entropy * target_mask).sum() / target_mask.sum().clamp(min=1)
        actions = one_hot.detach().argmax(-1)
        return Stage1Output(
            logits=token_logits, lm_loss=lm_loss, codebook_loss=lm_loss.new_zeros(()),
            commitment_loss=-self.config.entropy_coef * mean_entropy, actions=actions, features=logits.detach(),
            target_mask=target_mask, usage=code_usage(actions, self.config.num_actions, target_mask),
        )

    def inverse_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T-1, K) inverse-dynamics logits; entry t scores a_t given x_{<=t+1}."""
        return self._inverse_logits(*self.states(input_ids, attention_mask))

    def label_actions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T-1) inverse-dynamics action a_t (argmax) for every step x_t -> x_{t+1} of the text."""
        return self.inverse_logits(input_ids, attention_mask).argmax(-1)

    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, K) action logits; entry t scores a_t given x_{<=t}."""
        states, inputs = self.states(input_ids, attention_mask)
        return self.policy(self.lm.norm(states), inputs)

    def action_log_probs(self, input_ids: torch.Tensor, actions: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a_t | x_{<=t}) and the policy entropy at every position.

        `actions` is (B, T) or (B, T-1); returns two (B, actions.shape[1]) tensors.
        """
        return chosen_log_probs(self.policy_logits(input_ids, attention_mask)[:, : actions.shape[1]], actions)

    def world_logits(self, input_ids: torch.Tensor, actions: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """World-model logits (B, T, V) for input_ids (B, T) under the given action per position (B, T) or (T,)."""
        actions = actions.expand(input_ids.shape) if actions.dim() == 1 else actions
        states, _ = self.states(input_ids, attention_mask)
        return self.lm_head(self._world_hidden(states, self.embed_actions(actions)))

    def two_stream_logits(self, input_ids: torch.Tensor, current_actions: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """World logits (B, T, V) at each t under a_t = current_actions[:, t] and the ID's labels before t.

        CoLA's world model is per position — the logits at t see a_t and no earlier action — so this is
        `world_logits` with `current_actions`: the history actions cannot matter.
        """
        return self.world_logits(input_ids, current_actions, attention_mask)

    def simulated_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         temperature: float = 0.0, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The simulated LLM under teacher forcing: policy actions (greedy if temperature == 0, else
        sampled at that temperature) drive the world model. Returns (logits (B, T, V), actions (B, T))."""
        states, inputs = self.states(input_ids, attention_mask)
        actions = choose(self.policy(self.lm.norm(states), inputs), temperature, generator=generator)
        return self.lm_head(self._world_hidden(states, self.embed_actions(actions))), actions

    # BWArea tells "all-policy" from "two-stream" simulation by the actions its world model reads before t;
    # CoLA's reads none, so both are the same conditionals
    two_stream_simulated_logits = simulated_logits

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> GenerationOutput:
        """Simulate an LLM: the policy picks an action per token, the world model speaks (options: `generate`)."""
        return generate(self, input_ids, attention_mask, **options)

    def decoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int,
                prompt_actions: PromptActions = "inverse") -> "_CoLADecoder":
        """Cached decoder for `generate`. `prompt_actions` (how BWArea labels the prompt's own positions)
        is accepted for the shared interface and has no effect: CoLA's world model never reads those actions."""
        return _CoLADecoder(self, input_ids.shape[0], capacity)


def _policy_logits_and_state(model: CoLAModel, tokens: torch.Tensor, mask: torch.Tensor, lm_cache: KVCache,
                             policy_cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM on the new tokens, the policy on their states: newest position's logits (B, 1, K) and state (B, 1, H)."""
    states, _ = model.states(tokens, mask, lm_cache)
    policy_inputs = model.lm.attention_inputs(tokens, mask, policy_cache)
    # contiguous: the same strides after the prompt as after a step, so the compiled world step fits both
    return model.policy(model.lm.norm(states), policy_inputs)[:, -1:], states[:, -1:].contiguous()


def _merged_logits(model: CoLAModel, newest_state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """World-model logits (B, V) of the newest state (B, 1, H) under its action (B, 1)."""
    return model.lm_head(model._world_hidden(newest_state, model.embed_actions(actions)))[:, -1]


class _CoLADecoder:
    """Cached decoding: the LM trunk and the policy blocks keep KV caches; the world model needs only the
    newest state. `action_logits` runs the LM on the new tokens and the policy on their states and returns
    the newest position's logits (B, 1, K); `token_logits`, called next for the same tokens, merges the
    chosen action into the newest state."""

    def __init__(self, model: CoLAModel, batch_size: int, capacity: int):
        self.model = model
        self.lm_cache = model.lm.new_cache(batch_size, capacity)
        self.policy_cache = KVCache(model.policy.config, batch_size, capacity, self.lm_cache.keys[0].dtype,
                                    self.lm_cache.keys[0].device)
        self.newest_state: torch.Tensor | None = None
        self.policy_step, self.world_step = DecodeStep(_policy_logits_and_state), DecodeStep(_merged_logits)

    def make_static(self, compile_mode: str | None) -> None:
        self.lm_cache.make_static(self.model.lm)
        self.policy_cache.make_static(self.model.policy)
        for step in (self.policy_step, self.world_step):
            step.compile(compile_mode)

    def action_logits(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits, self.newest_state = self.policy_step(self.model, tokens, mask, self.lm_cache, self.policy_cache)
        return logits

    def token_logits(self, tokens: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """actions (B, 1): the newest position's choice -> world-model logits (B, V)."""
        return self.world_step(self.model, self.newest_state, actions)
