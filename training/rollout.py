"""Batched episodes with a language model as the policy, recorded for RL.

Each turn every unfinished environment's prompt is rendered (the task plus the recent transcript,
`envs.Transcript`, or the observation itself for single-step tasks such as BIG-Bench Hard), the
prompts are truncated to the model's context, generated as one left-padded batch until a newline,
and every environment executes its command. Per generated token the engine keeps the action that
produced it (a cognitive action for BWArea, the token itself for the AR baseline), log pi(action)
under the sampling policy and, afterwards, under the frozen reference policy; per episode the
rewards, score and outcome.

The world model decodes greedily given the action (token_temperature 0) by default, so all the
randomness of an episode is in the policy's actions and a greedy episode (argmax actions) on an
identical copy of the environment is deterministic — the ReMax baseline.

An environment that raises, or a reward function that raises, drops that episode (recorded in
`Episode.error`) instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from common.errors import describe_error
from envs import Transcript
from training.objectives import RolloutBatch
from training.settings import RolloutConfig


@dataclass
class Turn:
    prompt_ids: list[int]
    tokens: list[int]
    actions: list[int]
    log_probs: list[float]
    command: str
    reward: float = 0.0
    ref_log_probs: list[float] | None = None


@dataclass
class Episode:
    seed: int
    greedy: bool
    turns: list[Turn] = field(default_factory=list)
    total_reward: float = 0.0
    score: float = 0.0
    max_score: float = 0.0
    won: bool = False
    lost: bool = False
    truncated: bool = False
    error: str | None = None
    transcript: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> bool:
        return self.error is not None

    @property
    def num_tokens(self) -> int:
        return sum(len(turn.tokens) for turn in self.turns)

    @property
    def normalised_score(self) -> float:
        return self.score / self.max_score if self.max_score else float(self.won)


class ReferencePolicy:
    """The policy as it was when fine-tuning started: a snapshot of the weights that train, swapped into the
    model only while it scores actions — so a large model's frozen parts are never copied.

    `parameters` defaults to the model's policy_parameters() (BWArea's cognitive policy, the whole AR model);
    with LoRA tuning they are the adapters, whose initial state is the pretrained model itself."""

    def __init__(self, model: torch.nn.Module, parameters: Sequence[torch.nn.Parameter] | None = None):
        self.model = model
        self.parameters = list(model.policy_parameters() if parameters is None else parameters)
        self.snapshot = [parameter.detach().clone() for parameter in self.parameters]

    @torch.no_grad()
    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The reference's action logits (B, T, K), as model.policy_logits."""
        if self.snapshot and self.snapshot[0].device != self.parameters[0].device:  # the model moved (e.g. to a GPU)
            self.snapshot = [frozen.to(parameter.device) for frozen, parameter in zip(self.snapshot, self.parameters)]
        current = [parameter.data for parameter in self.parameters]
        try:
            for parameter, frozen in zip(self.parameters, self.snapshot):
                parameter.data = frozen
            return self.model.policy_logits(input_ids, attention_mask)
        finally:
            for parameter, data in zip(self.parameters, current):
                parameter.data = data


RewardFunction = Callable[[list[str], list[str]], Sequence[float]]  # (prompts, transcripts) -> episode rewards


class RolloutEngine:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: RolloutConfig,
                 reference: ReferencePolicy | None = None, reward_function: RewardFunction | None = None,
                 player: torch.nn.Module | None = None):
        """`model` is the policy the loss is taken through (policy_log_probs); `player` the copy of it that plays,
        recording the log-probs of what it chose (default: `model` itself; a sharded model plays through a rollout
        replica, training/sharding.py)."""
        self.model = model
        self.player = model if player is None else player
        self.tokenizer = tokenizer
        self.config = config
        self.reference = reference
        self.reward_function = reward_function
        context = model.config.max_position_embeddings - config.max_new_tokens
        self.context_tokens = min(config.context_tokens or context, context)
        if self.context_tokens < 8:
            raise ValueError(f"context of {self.context_tokens} tokens left for prompts: raise the model's "
                             "max_position_embeddings or lower max_new_tokens.")
        self.generated_tokens = 0

    @property
    def scoring_temperature(self) -> float:
        """The temperature log-probabilities are taken at: the sampling temperature (1 when sampling is greedy)."""
        return self.config.temperature or 1.0

    @property
    def device(self) -> torch.device:
        """Where the model is (Lightning may move it after the engine was built): every tensor is made there."""
        return next(self.model.parameters()).device

    # --- prompts ----------------------------------------------------------------------------
    def _prompt_ids(self, transcript: Transcript, observation: str) -> list[int]:
        if self.config.prompt_format == "observation":
            return self.tokenizer(observation)["input_ids"][-self.context_tokens:]
        for turns in range(min(self.config.history_turns, len(transcript.turns)), -1, -1):
            ids = self.tokenizer(transcript.prompt(max_turns=turns))["input_ids"]
            if len(ids) <= self.context_tokens:
                return ids
        return ids[-self.context_tokens:]

    def _left_padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), length), pad, dtype=torch.long, device="cpu")  # built on the host, moved once
        mask = torch.zeros(len(sequences), length, dtype=torch.long, device="cpu")
        for row, sequence in enumerate(sequences):
            if sequence:
                ids[row, length - len(sequence):] = torch.tensor(sequence, device="cpu")
                mask[row, length - len(sequence):] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- episodes ---------------------------------------------------------------------------
    def run(self, make_env: Callable[[], Any], seeds: Sequence[int], greedy: bool = False,
            sampling_seeds: Sequence[int] | None = None) -> list[Episode]:
        """Play one episode per seed, all environments stepping together; greedy = argmax actions.

        sampling_seeds: one per episode; the choices of episode i at turn t are drawn from a generator seeded by
        (sampling_seeds[i], t) alone, so an episode is the same whichever batch or process plays it (None: torch's
        global random state)."""
        episodes = [Episode(seed=int(seed), greedy=greedy) for seed in seeds]
        if sampling_seeds is not None and len(sampling_seeds) != len(episodes):
            raise ValueError(f"{len(sampling_seeds)} sampling seeds for {len(episodes)} episodes; give one per episode.")
        envs: list[Any] = [None] * len(episodes)
        transcripts: list[Transcript | None] = [None] * len(episodes)
        observations = [""] * len(episodes)
        active: list[int] = []
        for index, episode in enumerate(episodes):
            try:
                envs[index] = make_env()
                observations[index], info = envs[index].reset(seed=episode.seed)
                transcripts[index] = Transcript(info.get("task", ""))
                transcripts[index].observe(observations[index])
                self._record_info(episode, info)
                active.append(index)
            except Exception as error:  # an environment that cannot start is one dropped episode
                episode.error = describe_error(error)
        was_training = self.player.training
        self.player.eval()
        try:
            for _ in range(self.config.max_turns):
                if not active:
                    break
                active = self._turn(episodes, envs, transcripts, observations, active, greedy, sampling_seeds)
            for index in active:
                episodes[index].truncated = True
        finally:
            self.player.train(was_training)
            for env in envs:
                if env is not None:
                    env.close()
        for index, episode in enumerate(episodes):
            if transcripts[index] is not None:
                episode.transcript = transcripts[index].render()
        self._apply_reward_function(episodes)
        kept = [e for e in episodes if not e.dropped]
        if self.scoring_temperature != 1.0:  # generation records log-probs at temperature 1
            self._record_log_probs(kept, self.player.policy_logits, "log_probs")
        if self.reference is not None:
            self._record_log_probs(kept, self.reference.policy_logits, "ref_log_probs")
        return episodes

    def _turn_generators(self, episodes: list[Episode], active: list[int],
                         sampling_seeds: Sequence[int] | None) -> list[torch.Generator] | None:
        if sampling_seeds is None:
            return None
        seeds = [(int(sampling_seeds[i]) * 1_000_003 + len(episodes[i].turns)) % 2**63 for i in active]
        return [torch.Generator(self.device).manual_seed(seed) for seed in seeds]

    def _turn(self, episodes, envs, transcripts, observations, active, greedy, sampling_seeds) -> list[int]:
        prompts = [self._prompt_ids(transcripts[i], observations[i]) for i in active]
        input_ids, attention_mask = self._left_padded(prompts)
        generator = None if greedy else self._turn_generators(episodes, active, sampling_seeds)
        output = self.player.generate(
            input_ids, attention_mask, max_new_tokens=self.config.max_new_tokens,
            temperature=0.0 if greedy else self.config.temperature, token_temperature=self.config.token_temperature,
            stop_strings=["\n"], tokenizer=self.tokenizer, generator=generator, compile=self.config.compile,
        )
        still_active = []
        for row, index in enumerate(active):
            episode = episodes[index]
            keep = output.mask[row]
            tokens = output.tokens[row][keep].tolist()
            self.generated_tokens += len(tokens)
            command = Transcript.parse_command(self.tokenizer.decode(tokens, skip_special_tokens=True))
            turn = Turn(prompt_ids=prompts[row], tokens=tokens, actions=output.actions[row][keep].tolist(),
                        log_probs=output.action_log_probs[row][keep].tolist(), command=command)
            episode.turns.append(turn)
            try:
                observation, reward, terminated, truncated, info = envs[index].step(command)
            except Exception as error:  # a crashing environment drops the episode, not the run
                episode.error = describe_error(error)
                continue
            turn.reward = float(reward)
            episode.total_reward += turn.reward
            self._record_info(episode, info)
            transcripts[index].step(command, observation)
            observations[index] = observation
            if terminated or truncated:
                episode.truncated = bool(truncated and not terminated)
            else:
                still_active.append(index)
        return still_active

    @staticmethod
    def _record_info(episode: Episode, info: dict[str, Any]) -> None:
        episode.score = float(info.get("score", episode.total_reward) or 0.0)
        episode.max_score = float(info.get("max_score", 0.0) or 0.0)
        episode.won = bool(info.get("won", False))
        episode.lost = bool(info.get("lost", False))
        episode.info = {k: v for k, v in info.items() if k in ("achievements", "target", "prediction", "game_seed", "index")}

    def _apply_reward_function(self, episodes: list[Episode]) -> None:
        """Replace environment rewards by the reward function's score of each whole episode (on its last turn)."""
        scored = [e for e in episodes if not e.dropped and e.turns]
        if self.reward_function is None or not scored:
            return
        try:
            rewards = [float(r) for r in self.reward_function([e.transcript for e in scored], [e.turns[-1].command for e in scored])]
            if len(rewards) != len(scored):
                raise ValueError(f"reward function returned {len(rewards)} rewards for {len(scored)} episodes")
        except Exception as error:  # a failing reward model drops these episodes; training goes on
            for episode in scored:
                episode.error = "reward function failed: " + describe_error(error)
            return
        for episode, reward in zip(scored, rewards):
            for turn in episode.turns:
                turn.reward = 0.0
            episode.turns[-1].reward = reward
            episode.total_reward = reward

    # --- log-probabilities --------------------------------------------------------------------
    def turn_batch(self, turns: list[Turn]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompt+generation sequences, aligned actions and the mask of generated positions."""
        ids, mask = self._left_padded([t.prompt_ids + t.tokens for t in turns])
        actions = torch.zeros(len(turns), ids.shape[1] - 1, dtype=torch.long, device="cpu")
        generated = torch.zeros(len(turns), ids.shape[1] - 1, dtype=torch.bool, device="cpu")
        for row, turn in enumerate(turns):
            count = len(turn.tokens)
            actions[row, -count:] = torch.tensor(turn.actions, device="cpu")
            generated[row, -count:] = True
        return ids, mask, actions.to(self.device), generated.to(self.device)

    def _log_distributions(self, policy_logits: Callable[..., torch.Tensor], turns: list[Turn]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-distribution (N, K), log-prob of the chosen action (N,)) at the N generated positions of `turns`, at
        the scoring temperature."""
        ids, mask, actions, generated = self.turn_batch(turns)
        logits = policy_logits(ids, mask)[:, : actions.shape[1]]
        log_distribution = (logits.float() / self.scoring_temperature).log_softmax(-1)
        chosen = log_distribution.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return log_distribution[generated], chosen[generated]

    @torch.no_grad()
    def _record_log_probs(self, episodes: list[Episode], policy_logits: Callable[..., torch.Tensor], field_name: str) -> None:
        """Set Turn.<field_name> to the chosen actions' log-probs under `policy_logits`, 32 turns per pass, in inference
        mode as the actions were sampled."""
        turns = [turn for episode in episodes for turn in episode.turns]
        was_training = self.player.training
        self.player.eval()
        try:
            for start in range(0, len(turns), 32):
                chunk = turns[start:start + 32]
                values = self._log_distributions(policy_logits, chunk)[1].tolist()
                for turn in chunk:
                    setattr(turn, field_name, values[:len(turn.tokens)])
                    values = values[len(turn.tokens):]
        finally:
            self.player.train(was_training)

    def policy_log_probs(self, episodes: Sequence[Episode], full: bool = False) -> tuple[torch.Tensor, ...]:
        """log pi(a_t | s_t) with gradients and the policy entropy, (B, T) over each episode's generated tokens; with
        `full` also the whole log-distribution (B, T, K) (all at the scoring temperature)."""
        turns = [turn for episode in episodes for turn in episode.turns]
        log_distribution, chosen = self._log_distributions(self.model.policy_logits, turns)
        entropy = -(log_distribution.exp() * log_distribution).sum(-1)
        return per_episode(episodes, chosen, entropy, *((log_distribution,) if full else ()))

    @torch.no_grad()
    def reference_log_distributions(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """The reference policy's whole log-distribution (B, T, K) at each episode's generated positions."""
        turns = [turn for episode in episodes for turn in episode.turns]
        return per_episode(episodes, self._log_distributions(self.reference.policy_logits, turns)[0])[0]

    def values(self, value_model: torch.nn.Module, episodes: Sequence[Episode]) -> torch.Tensor:
        """V(s_t) (B, T) at every generated action position: the value model read where the policy chose."""
        turns = [turn for episode in episodes for turn in episode.turns]
        ids, mask, _, generated = self.turn_batch(turns)
        return per_episode(episodes, value_model(ids, mask)[:, :-1][generated])[0]


def per_episode(episodes: Sequence[Episode], *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scatter flat per-token values (N, ...) (episode-major, turn order) into (B, T, ...) tensors padded with zeros."""
    lengths = [episode.num_tokens for episode in episodes]
    width = max(lengths, default=0)
    results = []
    for values in flat:
        padded = values.new_zeros(len(episodes), width, *values.shape[1:])
        padded[_token_mask(lengths, width, values.device)] = values
        results.append(padded)
    return tuple(results)


def _token_mask(lengths: Sequence[int], width: int, device: torch.device | str) -> torch.Tensor:
    return torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


def build_rollout_batch(episodes: Sequence[Episode], log_probs: torch.Tensor, entropy: torch.Tensor | None = None,
                        baseline_returns: Sequence[float] | None = None, group_ids: Sequence[int] | None = None,
                        log_policy: torch.Tensor | None = None, ref_log_policy: torch.Tensor | None = None) -> RolloutBatch:
    """The objective's input for `episodes` (all kept, none dropped), given recomputed log-probs (B, T) (and, for
    exact regularisers, the policy's and the reference's whole log-distributions (B, T, K))."""
    lengths = [episode.num_tokens for episode in episodes]
    width = log_probs.shape[1]
    host = torch.device("cpu")  # filled element by element on the host, then moved to the model's device once
    mask = _token_mask(lengths, width, host)
    token_rewards = torch.zeros(len(episodes), width, device=host)
    old_log_probs = torch.zeros(len(episodes), width, device=host)
    have_reference = all(turn.ref_log_probs is not None for episode in episodes for turn in episode.turns)
    ref_log_probs = torch.zeros(len(episodes), width, device=host) if have_reference else None
    for row, episode in enumerate(episodes):
        position = 0
        for turn in episode.turns:
            span = slice(position, position + len(turn.tokens))
            old_log_probs[row, span] = torch.tensor(turn.log_probs, device=host)
            if ref_log_probs is not None:
                ref_log_probs[row, span] = torch.tensor(turn.ref_log_probs, device=host)
            position += len(turn.tokens)
            token_rewards[row, position - 1] += turn.reward  # a turn's reward lands on its last token
    baselines = None if baseline_returns is None else torch.tensor(list(baseline_returns), dtype=torch.float32, device=host)
    groups = None if group_ids is None else torch.tensor(list(group_ids), dtype=torch.long, device=host)
    on_device = lambda tensor: None if tensor is None else tensor.to(log_probs.device)  # noqa: E731
    return RolloutBatch(
        log_probs=log_probs, mask=on_device(mask), token_rewards=on_device(token_rewards),
        old_log_probs=on_device(old_log_probs), ref_log_probs=on_device(ref_log_probs), entropy=entropy,
        baseline_returns=on_device(baselines), group_ids=on_device(groups), log_policy=log_policy,
        ref_log_policy=ref_log_policy,
    )


@dataclass
class EpisodeSummary:
    episodes: int
    dropped: int
    mean_reward: float
    success_rate: float
    normalised_score: float
    mean_turns: float
    tokens: int


def summarize(episodes: Sequence[Episode]) -> EpisodeSummary:
    kept = [e for e in episodes if not e.dropped]
    count = max(len(kept), 1)
    return EpisodeSummary(
        episodes=len(kept), dropped=len(episodes) - len(kept),
        mean_reward=sum(e.total_reward for e in kept) / count,
        success_rate=sum(e.won for e in kept) / count,
        normalised_score=sum(e.normalised_score for e in kept) / count,
        mean_turns=sum(len(e.turns) for e in kept) / count,
        tokens=sum(e.num_tokens for e in kept),
    )
