"""The agent protocol and what every agent shares.

    agent.reset(info)                          # one environment
    action = agent.act(observation, info)
    agent.reset_batch(infos)                   # many environments, batched decisions
    actions = agent.act_batch(observations, infos, active=None)   # None for inactive slots
    agent.last_traces                          # one StepTrace per environment that acted in the last call
    agent.override_action(index, action)       # another action was taken instead of the agent's last one
    agent.stats                                # running totals (steps, parse failures, faults, tokens, rounds)

Each environment slot keeps an `envs.Transcript` of its episode (objective, observations, actions).
`act_batch` takes `active` (a mask, e.g. `[not d for d in batch_env.done]`) so finished environments
of an `envs.BatchEnv` are skipped; their entry in the returned list is None, which BatchEnv accepts.

`LLMAgent` adds what the language-model agents share: the fallback action and turning an answer into
an action (parsing against `info["admissible_actions"]`, the original SPRING substring rule, or the
text itself). A failed backend request or an unparseable answer never raises: the step takes the
fallback action and its trace records why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.dag import check_placeholders
from agents.llm import Backend
from agents.parsing import parse_action, parse_action_faithful
from agents.trace import AgentStats, StepTrace
from common.errors import InvalidInput
from envs.transcript import Transcript, tidy_command

ANSWER_FORMATS = ("action", "text", "choice")
PARSING_MODES = ("robust", "faithful")


@dataclass
class Slot:
    """Per-environment memory of an agent."""

    transcript: Transcript
    observation: str = ""            # the current observation as the environment gave it (clipped, not tidied)
    steps: int = 0
    memory: dict[str, Any] = field(default_factory=dict)   # agent-specific (e.g. walkthrough position)


class Agent:
    name = "agent"

    def __init__(self, max_observation_chars: int = 4000) -> None:
        self.max_observation_chars = max_observation_chars
        self.slots: list[Slot] = []
        self.stats = AgentStats()
        self.last_traces: list[StepTrace] = []

    # -- protocol -------------------------------------------------------------------------------

    def reset(self, info: dict[str, Any]) -> None:
        """Start a new episode (single-environment use)."""
        self.reset_batch([info])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """The action for one environment (after reset)."""
        return self.act_batch([observation], [info])[0]

    def reset_batch(self, infos: Sequence[dict[str, Any]]) -> None:
        """Start new episodes in len(infos) environment slots."""
        self.slots = []
        for index, info in enumerate(infos):
            self.reset_one(index, info)

    def reset_one(self, index: int, info: dict[str, Any]) -> None:
        """Start a new episode in slot `index` only (slots up to it are created as needed)."""
        while len(self.slots) <= index:
            self.slots.append(Slot(Transcript("")))
        self.slots[index] = Slot(Transcript(str(info.get("task") or "")))
        self._on_reset(self.slots[index], info)

    def act_batch(self, observations: Sequence[str], infos: Sequence[dict[str, Any]],
                  active: Sequence[bool] | None = None) -> list[str | None]:
        """One action per active environment, decided together; None for inactive ones."""
        if len(observations) != len(infos):
            raise ValueError(f"act_batch got {len(observations)} observations but {len(infos)} infos.")
        if len(observations) != len(self.slots):
            raise ValueError(f"act_batch got {len(observations)} environments but the agent was reset for "
                             f"{len(self.slots)}; call reset_batch(infos) first.")
        active = [True] * len(observations) if active is None else list(active)
        if len(active) != len(observations):
            raise ValueError(f"act_batch got {len(active)} active flags for {len(observations)} environments.")
        indices = [i for i, on in enumerate(active) if on]
        if indices:
            self.prepare()   # one-off work (SPRING's reading) is timed on its own, not as step latency
        traces = []
        for i in indices:
            slot = self.slots[i]
            slot.observation = self._clip(observations[i])
            slot.transcript.observe(slot.observation)
            traces.append(StepTrace(agent=self.name, env_index=i, step=slot.steps, observation=observations[i], action=""))
        start = time.perf_counter()
        rounds = self._decide(traces, [self.slots[i] for i in indices], [infos[i] for i in indices]) if traces else 0
        elapsed = time.perf_counter() - start
        actions: list[str | None] = [None] * len(observations)
        for i, trace in zip(indices, traces):
            trace.latency_s, trace.rounds = elapsed, rounds
            self.slots[i].transcript.act(trace.action)
            self.slots[i].steps += 1
            self.stats.add(trace)
            actions[i] = trace.action
        self.stats.rounds += rounds
        self.last_traces = traces
        return actions

    def override_action(self, index: int, action: str) -> None:
        """Record that slot `index` really took `action` instead of the agent's last choice (e.g. a human
        overruled its suggestion), so the history its next prompt is built from says what was done."""
        if not 0 <= index < len(self.slots):
            raise IndexError(f"override_action got slot {index} but the agent has {len(self.slots)} slots; "
                             "call reset_batch(infos) first.")
        transcript = self.slots[index].transcript
        if not transcript.turns:
            raise ValueError(f"override_action: slot {index} has not acted yet in this episode; call act first.")
        observation, _ = transcript.turns[-1]
        transcript.turns[-1] = (observation, tidy_command(action))

    def prepare(self) -> Any:
        """One-off work before the first step (default: none); `act_batch` calls it outside the step's timing."""
        return None

    # -- for subclasses -------------------------------------------------------------------------

    def _on_reset(self, slot: Slot, info: dict[str, Any]) -> None:
        """Agent-specific episode start (default: nothing)."""

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        """Fill `trace.action` (and the rest of the trace) for each environment; return backend rounds used."""
        raise NotImplementedError

    def _clip(self, observation: str) -> str:
        if len(observation) <= self.max_observation_chars:
            return observation
        return observation[:self.max_observation_chars] + " [...]"


def build_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """cls(**values) with a clear error naming `where` for unknown or missing keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}.")
    try:
        return cls(**values)
    except TypeError as error:
        raise InvalidInput(f"{where}: {error}") from None


def fallback_for(info: dict[str, Any], fallback_action: str | None) -> str:
    """The configured fallback, else the first admissible action, else the empty string."""
    if fallback_action is not None:
        return fallback_action
    admissible = info.get("admissible_actions") or []
    return admissible[0] if admissible else ""


@dataclass
class LLMAgentConfig:
    """Settings every language-model agent shares.
    system: system text ({actions} and {task} are filled per environment).
    history: observations shown (the current one and history-1 before it, with the actions between).
    max_tokens / temperature: per request. answer_format: "action" parses the answer into one of
    info["admissible_actions"] (the raw first line when the env lists none); "text" uses the answer as is
    (BIG-Bench Hard); "choice" has the final request pick one of info["admissible_actions"] (Crafter's 17
    actions, TextWorld's admissible commands, a BBH task's answer set) by the backend's likelihood of each
    (`Backend.choose`), so the action is valid by construction; where the backend cannot score options or
    the env lists none, the answer is generated and parsed as with "action". parsing: "robust" (word
    boundaries, earliest mention, fuzzy) or "faithful" (the original SPRING substring rule, for comparison).
    fallback_action: taken after a failed request or an unparseable answer (None: the first admissible
    action, else ""). fuzzy_cutoff: similarity needed by the fuzzy stage. max_observation_chars: longer observations are cut. stop: stop strings of every
    request (e.g. "\nQuestion:" keeps a small model from inventing the next question)."""

    system: str = "You are a helpful assistant playing a text game."
    history: int = 2
    max_tokens: int = 64
    temperature: float = 0.0
    answer_format: str = "action"
    parsing: str = "robust"
    fallback_action: str | None = None
    fuzzy_cutoff: float = 0.8
    max_observation_chars: int = 4000
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise InvalidInput(f"answer_format {self.answer_format!r} is unknown; choose one of {', '.join(ANSWER_FORMATS)}.")
        if self.parsing not in PARSING_MODES:
            raise InvalidInput(f"parsing {self.parsing!r} is unknown; choose one of {', '.join(PARSING_MODES)}.")
        if self.history < 1:
            raise InvalidInput(f"history must be at least 1 (the current observation), got {self.history}.")
        check_placeholders(self.system, "the system text")


class LLMAgent(Agent):
    """An agent that asks a backend and turns the final answer into an action."""

    def __init__(self, backend: Backend, config: LLMAgentConfig) -> None:
        super().__init__(config.max_observation_chars)
        self.backend = backend
        self.config = config

    def variables(self, info: dict[str, Any]) -> dict[str, str]:
        admissible = info.get("admissible_actions")
        return {"actions": ", ".join(admissible) if admissible else "any command", "task": str(info.get("task") or "")}

    def recent(self, slot: Slot) -> str:
        return slot.transcript.render(max_turns=self.config.history - 1)

    def options(self, info: dict[str, Any]) -> list[str] | None:
        """The answers the final request chooses among (answer_format "choice"), else None (free text)."""
        if self.config.answer_format != "choice":
            return None
        return list(info.get("admissible_actions") or []) or None

    def resolve(self, trace: StepTrace, answer: str, error: str | None, info: dict[str, Any],
                chosen: bool = False) -> None:
        """Set the action of `trace` from the final answer (`chosen`: picked among the valid options by
        likelihood), or the fallback after a fault or parse failure."""
        trace.answer = answer
        fallback = fallback_for(info, self.config.fallback_action)
        if error is not None:
            trace.action, trace.fallback = fallback, True
            return
        if chosen:
            trace.action, trace.parse_method = answer, "choice"
            return
        admissible = info.get("admissible_actions") or []
        if self.config.answer_format == "text" or not admissible:
            command = Transcript.parse_command(answer) if self.config.answer_format == "action" else answer
            trace.action, trace.parse_method = command, "text"
            if not command.strip():
                trace.action, trace.fallback, trace.parse_failed = fallback, True, True
            return
        if self.config.parsing == "faithful":
            parsed = parse_action_faithful(answer, admissible)
        else:
            parsed = parse_action(answer, admissible, self.config.fuzzy_cutoff, info.get("action_aliases"),
                                  echo=trace.observation)
        trace.parse_method, trace.parse_failed = parsed.method, parsed.failed
        trace.action, trace.fallback = (parsed.action, False) if parsed.action is not None else (fallback, True)
