"""The plain settings of rollouts, pretraining budgets and RL budgets: dataclasses without torch, so that commands
can build their option parsers (and `--help`) before any model code loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidInput

PROMPT_FORMATS = ("transcript", "observation")


@dataclass
class RolloutConfig:
    """How episodes are played.

    Args:
        max_turns: Horizon (environment steps) per episode; the environment's own limit may end it earlier.
        max_new_tokens: Tokens generated per turn (a command ends at the first newline).
        context_tokens: Prompt budget in tokens; default = model context - max_new_tokens.
        history_turns: Transcript turns kept in the prompt (fewer when the budget is exceeded).
        temperature: Sampling temperature of the policy's choice. Every log-probability the engine records or
            recomputes (sampling, reference, training) is taken at this temperature, i.e. of softmax(logits / T), the
            policy actually sampled, so objectives stay on-policy at any T > 0 (0 = greedy, for evaluation only).
        token_temperature: BWArea's world-model token temperature given the action (0 = greedy, so that
            transitions stay deterministic given the actions).
        prompt_format: "transcript" (task + recent turns, for multi-turn games) or "observation" (the
            observation is the whole prompt, for single-step tasks such as BIG-Bench Hard).
        group_size: Fine-tuning only: sampled episodes per task and seed in a rollout batch (group baselines such as
            RLOO and GRPO compare them); model.episodes_per_update counts sampled episodes and must be a multiple.
        compile: decode with static KV caches under torch.compile (`generate(compile=...)`): False, True
            ("reduce-overhead", i.e. CUDA graphs, on a GPU; "default" on a CPU) or a torch.compile mode. Each new
            batch size or prompt length bucket compiles once (tens of seconds on a CPU), so it pays off over a
            long fine-tuning run, not a short one.
    """

    max_turns: int = 20
    max_new_tokens: int = 24
    context_tokens: int | None = None
    history_turns: int = 4
    temperature: float = 1.0
    token_temperature: float = 0.0
    prompt_format: str = "transcript"
    group_size: int = 1
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise InvalidInput(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}.")
        if self.max_turns < 1 or self.max_new_tokens < 1 or self.group_size < 1:
            raise InvalidInput("max_turns, max_new_tokens and group_size must be at least 1.")
        if self.temperature < 0:
            raise InvalidInput(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")


@dataclass
class PretrainBudget:
    """Pretraining settings shared by BWArea and the AR baseline.

    architecture: overrides of the preset's shapes (e.g. {"hidden_size": 64}); the AR baseline matches the
        world model's shape. With init_from: the action options instead (num_actions, code_dim, ...), plus
        max_position_embeddings, which also caps the AR baseline's context.
    steps: optimizer steps of stage 1 and of the AR baseline (same token budget);
        policy_steps: stage-2 steps (behaviour cloning on the same blocks).
    init_from: a pretrained Hugging Face causal LM (directory or .gguf): BWArea (`variant` bwarea or cola) is
        built from it and the AR baseline is that LM, fine-tuned on the same blocks; both read with its tokenizer.
    tuning / policy_tuning / ar_tuning: what trains in stage 1, stage 2 and the AR baseline (full, actions,
        head, lora: training.pretrain), with `lora` the LoRA settings ({rank, alpha, dropout, targets}).
    loss / gem_beta: the supervised loss of stage 2 (behaviour cloning) and of the AR baseline: "cross_entropy" or
        "gem" with temperature gem_beta (training.gem); stage 1 always trains with its own losses.
    """

    preset: str = "tiny"
    architecture: dict[str, Any] | None = None
    vocab_size: int = 2048
    block_size: int = 128
    batch_size: int = 16
    steps: int = 400
    policy_steps: int = 200
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    precision: str = "auto"
    val_fraction: float = 0.1
    val_check_interval: int = 100
    val_blocks: int = 32
    init_from: str | None = None
    variant: str = "bwarea"
    tuning: str = "full"
    policy_tuning: str = "full"
    ar_tuning: str = "full"
    lora: dict[str, Any] | None = None
    cache_dir: str | None = None
    progress: bool = True
    seed: int = 0
    loss: str = "cross_entropy"
    gem_beta: float = 0.7

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.block_size


@dataclass
class FinetuneBudget:
    """RL settings shared by BWArea (policy only) and the AR baseline (all weights); accelerator and precision are
    Lightning's (auto: the GPU if there is one; bf16-mixed where bf16 is native, else 32-true)."""

    env: str = "textworld/coin-easy"
    env_options: dict[str, Any] = field(default_factory=dict)
    task_pool: int = 32
    episodes_per_update: int = 16
    updates: int = 12
    objective: str = "remax"
    objective_options: dict[str, Any] = field(default_factory=dict)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(max_turns=8, max_new_tokens=12))
    learning_rate: float = 3e-5
    tuning: str = "full"
    lora: dict[str, Any] | None = None
    accelerator: str = "auto"
    precision: str = "auto"
    progress: bool = True
    seed: int = 0
