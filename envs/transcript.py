"""The text form of an episode: the one format shared by corpora, RL rollouts and LLM agents.

An episode renders as

    Objective: <task text>
    <observation>
    > <command>
    <observation>
    ...

`Transcript.render()` gives the whole episode (corpus documents); `Transcript.prompt()` gives the
recent history ending with the current observation and "\\n>", so a language model continues with
" <command>" up to the newline. The prompt stops before the space on purpose: byte-level BPE
tokenizers glue the space to the next word, so "> go west" in a document is ">", " go", " west", and a
prompt ending in "> " would ask a model trained on documents for a token sequence it never saw. Observations and commands are tidied the same way everywhere: lines
stripped, runs of spaces collapsed, blank lines removed (a transcript has no blank lines, so a
document boundary or a newline-stopped completion is never ambiguous).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.errors import InvalidInput

COMMAND_PREFIX = "> "
_SPACES = re.compile(r"[ \t\f\v\r]+")


def tidy(text: str) -> str:
    """Strip every line, collapse runs of spaces, drop blank lines."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def tidy_command(command: str) -> str:
    """A command as it appears after "> ": one line, single spaces (an empty command stays empty)."""
    return " ".join(command.split())


@dataclass
class Transcript:
    """An objective, the completed (observation, command) turns, and the observation awaiting a command."""

    objective: str
    turns: list[tuple[str, str]] = field(default_factory=list)
    observation: str | None = None

    def __post_init__(self) -> None:
        self.objective = " ".join(tidy(self.objective).split("\n"))
        self.turns = [(tidy(obs), tidy_command(action)) for obs, action in self.turns]
        if self.observation is not None:
            self.observe(self.observation)

    def observe(self, observation: str) -> None:
        """Set the current observation (the one the next command answers). A first observation that
        opens with the objective (TextWorld's intro does) loses that repeat: the objective line has it."""
        observation = tidy(observation)
        if not self.turns and observation.startswith(self.objective):
            observation = observation[len(self.objective):].strip()
        self.observation = observation

    def act(self, command: str) -> None:
        """Record `command` as the answer to the current observation."""
        if self.observation is None:
            raise InvalidInput("Transcript.act needs a current observation first; call observe(observation).")
        self.turns.append((self.observation, tidy_command(command)))
        self.observation = None

    def step(self, command: str, next_observation: str) -> None:
        """act(command) then observe(next_observation): one environment step."""
        self.act(command)
        self.observe(next_observation)

    def render(self, max_turns: int | None = None) -> str:
        """The episode as text; with max_turns only the most recent turns (the objective line always stays)."""
        turns = self.turns if max_turns is None else self.turns[-max_turns:] if max_turns > 0 else []
        lines = [f"Objective: {self.objective}"]
        for observation, command in turns:
            lines += [observation, (COMMAND_PREFIX + command).rstrip()]
        if self.observation is not None:
            lines.append(self.observation)
        return "\n".join(line for line in lines if line)

    def prompt(self, max_turns: int | None = None) -> str:
        """render(max_turns) ending with the current observation and "\\n>", ready for " <command>"."""
        if self.observation is None:
            raise InvalidInput("Transcript.prompt needs a current observation; call observe(observation) first.")
        return self.render(max_turns) + "\n" + COMMAND_PREFIX.rstrip()

    @staticmethod
    def parse_command(completion: str) -> str:
        """The command a model wrote after a prompt: its first line, tidied."""
        return tidy_command(completion.split("\n", 1)[0])
