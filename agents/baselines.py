"""Agents without a language model: random, walkthrough oracle (TextWorld), human at the keyboard."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from agents.base import Agent, Slot, fallback_for
from agents.trace import StepTrace
from common.errors import InvalidInput


@dataclass
class RandomAgentConfig:
    """seed: of the agent's random generator. fallback_action: when an env lists no admissible actions
    (None: the empty string)."""

    seed: int = 0
    fallback_action: str | None = None


class RandomAgent(Agent):
    """Uniform over `info["admissible_actions"]`."""

    name = "random"

    def __init__(self, config: RandomAgentConfig | None = None) -> None:
        super().__init__()
        self.config = config or RandomAgentConfig()
        self.rng = np.random.default_rng(self.config.seed)

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        for trace, info in zip(traces, infos):
            admissible = info.get("admissible_actions") or []
            if admissible:
                trace.action, trace.parse_method = admissible[int(self.rng.integers(len(admissible)))], "random"
            else:
                trace.action, trace.fallback = fallback_for(info, self.config.fallback_action), True
        return 0


@dataclass
class WalkthroughAgentConfig:
    """fallback_action: played once the walkthrough is used up (e.g. after a detour)."""

    fallback_action: str = "look"


class WalkthroughAgent(Agent):
    """Plays the walkthrough TextWorld stored when it generated the game (`info["walkthrough"]` at reset)."""

    name = "walkthrough"

    def __init__(self, config: WalkthroughAgentConfig | None = None) -> None:
        super().__init__()
        self.config = config or WalkthroughAgentConfig()

    def _on_reset(self, slot: Slot, info: dict[str, Any]) -> None:
        if "walkthrough" not in info:
            raise InvalidInput("the walkthrough agent needs info['walkthrough'] at reset; only TextWorld environments "
                               "(envs.make('textworld/<preset>')) provide it.")
        slot.memory["walkthrough"] = list(info["walkthrough"])

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        for trace, slot in zip(traces, slots):
            remaining = slot.memory["walkthrough"]
            if remaining:
                trace.action, trace.parse_method = remaining.pop(0), "walkthrough"
            else:
                trace.action, trace.fallback = self.config.fallback_action, True
        return 0


@dataclass
class HumanAgentConfig:
    """show_actions: print the admissible actions, numbered, before asking."""

    show_actions: bool = True


class HumanAgent(Agent):
    """Shows each observation and reads the action from a text stream (stdin by default).

    Type an action, or the number of an admissible action. End of input (Ctrl-D) raises EOFError,
    which a play loop treats as the player leaving.
    """

    name = "human"

    def __init__(self, config: HumanAgentConfig | None = None, input_stream: TextIO | None = None,
                 output_stream: TextIO | None = None) -> None:
        super().__init__()
        self.config = config or HumanAgentConfig()
        self.input = input_stream if input_stream is not None else sys.stdin
        self.output = output_stream if output_stream is not None else sys.stdout

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        for trace, info in zip(traces, infos):
            admissible = info.get("admissible_actions") or []
            label = f"[environment {trace.env_index}] " if len(self.slots) > 1 else ""
            print(f"\n{label}{trace.observation}", file=self.output)
            if self.config.show_actions and admissible:
                print("Actions: " + "  ".join(f"{i}) {a}" for i, a in enumerate(admissible, 1)), file=self.output)
            print("> ", end="", file=self.output, flush=True)
            line = self.input.readline()
            if not line:
                raise EOFError("the human player closed the input (end of file).")
            typed = line.strip()
            if typed.isdigit() and 1 <= int(typed) <= len(admissible):
                typed = admissible[int(typed) - 1]
            trace.action, trace.answer, trace.parse_method = typed, line.rstrip("\n"), "typed"
        return 0
