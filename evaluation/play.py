"""Playing one episode in the terminal (`bwarea play`): yourself, with an agent's suggestions, or watching an
agent play it step by step.

Episode `seed` N is episode N as `bwarea evaluate` numbers them: TextWorld game N of `split`, BIG-Bench
Hard item N, Crafter world 2,000,000 + N on the test split. While playing, a line starting with ":" is a
command for the player, not the game: `:help`, `:actions` (list the valid actions), `:quit`. An empty
line takes the agent's suggestion. End of input (Ctrl-D) or Ctrl-C ends the game; either way the episode
is saved to `<out>/episode.json` in the format of `bwarea evaluate`'s episodes.jsonl lines, plus
`player` and `ended`. What is shown after each step is the family's own status line (envs.EnvFamily.status).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import agents
import envs
from common.files import atomic_write, atomic_write_text, check_writable
from evaluation.config import EvaluationError
from evaluation.plan import env_options, env_seed
from evaluation.records import EpisodeRecorder

HELP = """Type an action and press Enter (a number picks from the listed actions).
  :actions  list the valid actions      :help  this help      :quit  stop (Ctrl-D and Ctrl-C too)
  an empty line takes the agent's suggestion (with --agent)"""
EXIT_INTERRUPTED = 130


@dataclass
class PlayConfig:
    """Play an environment in the terminal, with an agent's suggestions, or watch an agent play.

    Args:
        env: Environment: textworld/<preset>, crafter or bbh/<task> (see envs.names()).
        seed: Episode index: TextWorld game / BBH item / Crafter world N of the split.
        split: TextWorld and Crafter: train / validation / test; BIG-Bench Hard: train / test / all.
        agent: Agent config (name in configs/agents or YAML path): its suggestion is shown each turn, or with
            --watch it plays.
        agent_overrides: Deep-merged into the agent config.
        watch: Watch the agent play: each DAG node's question and answer, or the latent action per token.
        pause: With --watch, wait for Enter before each step (false: run through).
        frames: Environments with pictures (Crafter): save the picture of the world after every step as
            <dir>/step-NNNNN.png.
        frame_size: Picture size in pixels.
        out: Directory for episode.json (default runs/play/<env>-<seed>-<time>).
        max_steps: Step limit (default: the environment's own: TextWorld per preset, Crafter 10000).
        show_actions: List the valid actions whenever they change.
        textworld_cache_dir: TextWorld game cache directory.
        bbh_data_dir: BIG-Bench Hard copy (tasks/, cot-prompts/); default $BWAREA_BBH_DIR.
        bbh_shots: BIG-Bench Hard prompt: 0 or 3 shots.
    """

    env: str
    seed: int = 0
    split: str = "test"
    agent: str | dict[str, Any] | None = None
    agent_overrides: dict[str, Any] = field(default_factory=dict)
    watch: bool = False
    pause: bool = True
    frames: str | None = None
    frame_size: int = 256
    out: str | None = None
    max_steps: int | None = None
    show_actions: bool = True
    textworld_cache_dir: str | None = None
    bbh_data_dir: str | None = None
    bbh_shots: int = 0

    def __post_init__(self) -> None:
        if self.env not in envs.names():
            raise EvaluationError(f"unknown environment {self.env!r}; valid names are {', '.join(envs.patterns())} "
                                  "(e.g. textworld/coin-easy, crafter, bbh/navigate).")
        if self.watch and self.agent is None:
            raise EvaluationError("--watch shows an agent playing; name one with --agent (e.g. --agent random).")
        if self.frames is not None and not envs.family(self.env).renders_frames:
            raise EvaluationError(f"--frames saves Crafter's pictures (of environments that render frames); {self.env} "
                                  "is text only.")
        if self.seed < 0:
            raise EvaluationError(f"--seed is an episode index (0 or more), got {self.seed}.")


class Session:
    """One episode in the terminal: reads lines from `input_stream`, writes to `output`."""

    def __init__(self, config: PlayConfig, input_stream: TextIO | None = None, output: TextIO | None = None) -> None:
        self.config = config
        self.input = input_stream if input_stream is not None else sys.stdin
        self.output = output if output is not None else sys.stdout
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = Path(config.out) if config.out else Path("runs") / "play" / f"{config.env.replace('/', '_')}-{config.seed}-{stamp}"
        for directory in (self.out, config.frames):   # a finished game must not be lost to an unwritable folder
            if directory is not None:
                check_writable(directory)
        self.family = envs.family(config.env)
        options = env_options(config.env, dataclasses.asdict(config))
        if config.frames is not None:
            options.update(render_mode="rgb_array", size=(config.frame_size, config.frame_size))
        self.env = envs.make(config.env, **options)
        self.agent = agents.make_agent(config.agent, overrides=config.agent_overrides) if config.agent is not None else None
        if self.agent is not None and self.agent.name == "human":
            raise EvaluationError("--agent human is you; leave --agent out to play yourself.")
        self.reset_seed = env_seed(config.env, config.split, config.seed)
        self.recorder: EpisodeRecorder | None = None
        self.shown_actions: list[str] | None = None

    # -- terminal helpers -----------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.output, flush=True)

    def ask(self, prompt: str) -> str:
        """One line from the player; EOFError at end of input. Uses input() (line editing) on a real terminal."""
        if self.input is sys.stdin and self.output is sys.stdout:
            return input(prompt)
        self.output.write(prompt)
        self.output.flush()
        line = self.input.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def show_actions(self, info: Mapping[str, Any], force: bool = False) -> None:
        admissible = list(info.get("admissible_actions") or [])
        if admissible and (force or (self.config.show_actions and admissible != self.shown_actions)):
            self.say("Actions: " + "  ".join(f"{i}) {action}" for i, action in enumerate(admissible, 1)))
            self.shown_actions = admissible

    def save_frame(self, step: int) -> None:
        if self.config.frames is None:
            return
        from PIL import Image

        frame = self.env.render()
        path = Path(self.config.frames) / f"step-{step:05d}.png"
        atomic_write(path, lambda temp: Image.fromarray(frame).save(temp, format="PNG"))

    # -- the episode ----------------------------------------------------------------------------

    def run(self) -> int:
        """Play until the episode ends, the player quits, input ends or Ctrl-C; always save. Returns the exit code."""
        ended, code = "error", 0
        try:
            ended = self._loop()
        except EOFError:
            ended = "end of input"
            self.say()
        except KeyboardInterrupt:
            ended, code = "interrupted", EXIT_INTERRUPTED
            self.say()
        finally:
            path = self.save(ended)
            if path is not None:
                self.say(f"Episode ({ended}) saved to {path}")
        return code

    def _loop(self) -> str:
        config = self.config
        observation, info = self.env.reset(seed=self.reset_seed)
        self.recorder = EpisodeRecorder(config.env, 0, 0, config.seed, self.reset_seed, observation, info)
        player = f"agent {config.agent}" if config.watch else "you"
        self.say(f"== {config.env}, episode {config.seed} ({config.split} split), played by {player} ==")
        backend = getattr(self.agent, "backend", None)
        if backend is not None:
            self.say(f"The agent's language model: {backend.where()}")
        if info.get("task") and not self.family.answers_questions:
            self.say(f"Objective: {info['task']}")
        if not config.watch:
            self.say(HELP)
        if self.agent is not None:
            self.agent.reset(info)
        self.save_frame(0)
        step = 0
        while True:
            self.say()
            self.say(observation)
            trace, suggestion = None, None
            if self.agent is not None:
                suggestion = self.agent.act(observation, info)
                trace = self.agent.last_traces[0]
            if config.watch:
                self.show_trace(trace)
                action = suggestion
                if config.pause:
                    typed = self.ask("[Enter: next step, :quit: stop] ").strip()
                    if typed in (":q", ":quit"):
                        return "quit"
            else:
                self.show_actions(info)
                if suggestion is not None:
                    self.say(f"Suggestion ({config.agent}): {suggestion}")
                action = self.read_action(info, suggestion)
                if action is None:
                    return "quit"
                if self.agent is not None and action != suggestion:
                    self.agent.override_action(0, action)
            observation, reward, terminated, truncated, info = self.env.step(action)
            step += 1
            self.recorder.step(action, reward, observation, info, terminated, truncated, trace)
            if suggestion is not None and not config.watch:
                self.recorder.trajectory[-1]["suggestion"] = suggestion
            self.save_frame(step)
            self.say(self.status(action, reward, info))
            if terminated or truncated:
                self.say()
                self.say("" if self.family.answers_questions else observation)
                return self.outcome(info, truncated)

    def read_action(self, info: Mapping[str, Any], suggestion: str | None) -> str | None:
        """The player's next action (None: quit). Handles :commands, numbers and empty lines."""
        admissible = list(info.get("admissible_actions") or [])
        while True:
            typed = self.ask("> ").strip()
            if typed in (":q", ":quit"):
                return None
            if typed == ":help":
                self.say(HELP)
                continue
            if typed == ":actions":
                self.show_actions(info, force=True)
                continue
            if not typed:
                if suggestion is not None:
                    return suggestion
                continue
            if typed.startswith(":"):
                self.say(f"Unknown command {typed!r}. {HELP}")
                continue
            if typed.isdigit() and admissible:
                if 1 <= int(typed) <= len(admissible):
                    return admissible[int(typed) - 1]
                if not self.family.answers_questions:   # answers may be numbers themselves
                    self.say(f"There are {len(admissible)} actions; type 1..{len(admissible)} or an action.")
                    continue
            return typed

    def status(self, action: str, reward: float, info: Mapping[str, Any]) -> str:
        return self.family.status(action, reward, info)

    def outcome(self, info: Mapping[str, Any], truncated: bool) -> str:
        if info.get("won"):
            result = "won"
        elif info.get("lost"):
            result = "lost"
        else:
            result = "out of steps" if truncated else "over"
        self.say(f"Game {result}. Score {info.get('score')}/{info.get('max_score')}.")
        return result

    def show_trace(self, trace: agents.StepTrace | None) -> None:
        """An agent's step: each DAG node's question and answer, the latent action behind each generated token
        (BWArea backends), and the action it parsed."""
        if trace is None:
            return
        tokenizer = getattr(getattr(self.agent, "backend", None), "tokenizer", None)
        for node in trace.nodes:
            question = node.question or prompt_tail(node.request)
            self.say(f"  [{node.node}] {question}" if question else f"  [{node.node}]")
            self.say(f"    -> {node.answer}" + (f"  (error: {node.error})" if node.error else ""))
            actions = node.metadata.get("actions") or []
            token_ids = node.metadata.get("token_ids") or []
            if actions:
                tokens = [tokenizer.decode([t]) if tokenizer is not None else str(t) for t in token_ids]
                self.say("    latent action per token: " + " ".join(f"{tok!r}:{a}" for tok, a in zip(tokens, actions)))
        how = f"{trace.parse_method}{', fallback' if trace.fallback else ''}"
        self.say(f"Agent action: {trace.action}  ({how})")

    def save(self, ended: str) -> Path | None:
        if self.recorder is None:
            return None
        record = self.recorder.record()
        record.update(player="human" if not self.config.watch else "agent",
                      agent=self.config.agent if isinstance(self.config.agent, (str, type(None))) else "inline mapping",
                      ended=ended, split=self.config.split)
        path = self.out / "episode.json"
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        return path


def prompt_tail(request: Mapping[str, Any]) -> str:
    """What a single-prompt agent (no DAG question) asked: the end of its last chat message or raw prompt."""
    messages = request.get("messages") or []
    if messages:
        return messages[-1]["content"].strip()[-160:]
    prompt = str(request.get("prompt") or "")
    return f"(raw prompt ending {prompt[-60:]!r})" if prompt else ""
