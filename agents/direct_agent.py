"""The direct-prompt LLM agent: one request per step, no question DAG.

Prompt styles:
- "chat": system text, then the recent history and an instruction as the user message;
- "transcript": a raw prompt in the shared transcript format (envs/transcript.py) ending in "\n>",
  stopped at the newline — the format this project's own models are pretrained on;
- "observation": the current observation as the raw prompt (BIG-Bench Hard, whose observation
  already is the question prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.base import LLMAgent, LLMAgentConfig, Slot
from agents.dag import check_placeholders, fill
from agents.llm import CompletionRequest, Message, answer_requests
from agents.trace import NodeTrace, StepTrace
from common.errors import InvalidInput

STYLES = ("chat", "transcript", "observation")


@dataclass
class DirectAgentConfig(LLMAgentConfig):
    """style: chat / transcript / observation (see module docstring). instruction: the chat style's request
    ({actions}, {task} filled). The transcript style always stops at a newline as well."""

    style: str = "chat"
    instruction: str = "Reply with the single best next action from this list: {actions}."

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.style not in STYLES:
            raise InvalidInput(f"style {self.style!r} is unknown; choose one of {', '.join(STYLES)}.")
        check_placeholders(self.instruction, "the instruction")


class DirectAgent(LLMAgent):
    name = "direct"

    def __init__(self, backend, config: DirectAgentConfig) -> None:
        super().__init__(backend, config)
        self.config: DirectAgentConfig = config

    def request(self, slot: Slot, info: dict[str, Any]) -> CompletionRequest:
        config = self.config
        if config.style == "transcript":
            return CompletionRequest(prompt=slot.transcript.prompt(config.history - 1), max_tokens=config.max_tokens,
                                     temperature=config.temperature, stop=tuple(config.stop) + ("\n",))
        if config.style == "observation":
            return CompletionRequest(prompt=slot.observation, max_tokens=config.max_tokens,
                                     temperature=config.temperature, stop=tuple(config.stop))
        variables = self.variables(info)
        user = f"Recent observations:\n{self.recent(slot)}\n\n{fill(config.instruction, variables)}"
        return CompletionRequest(messages=(Message("system", fill(config.system, variables)), Message("user", user)),
                                 max_tokens=config.max_tokens, temperature=config.temperature, stop=tuple(config.stop))

    def _decide(self, traces: list[StepTrace], slots: list[Slot], infos: list[dict[str, Any]]) -> int:
        requests = [self.request(slot, info) for slot, info in zip(slots, infos)]
        completions = answer_requests(self.backend, requests, [self.options(info) for info in infos])
        for trace, request, completion, info in zip(traces, requests, completions, infos):
            trace.nodes = [NodeTrace.of("answer", request, completion)]
            trace.faults = [f"answer: {completion.error}"] if completion.error else []
            self.resolve(trace, completion.text.strip(), completion.error, info,
                         chosen=completion.finish_reason == "choice")
        return 1
