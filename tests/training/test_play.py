"""`bwarea play` driven through a real pseudo-terminal (scripted keystrokes, Ctrl-C, Ctrl-D), plus watch mode."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cli.play import main
from envs.textworld import GameCache, game_seed
from evaluation.play import PlayConfig, Session
from tests.training.test_evaluate import tiny_bwarea_dir  # noqa: F401  (session fixture: a saved tiny BWArea)

REPO = Path(__file__).resolve().parents[2]


class Terminal:
    """`bwarea play ...` in a child process whose stdin/stdout/stderr are a pseudo-terminal."""

    def __init__(self, *args: str) -> None:
        environment = {**os.environ, "TERM": "dumb", "PYTHONPATH": str(REPO)}
        pid, fd = pty.fork()
        if pid == 0:  # the child: become `bwarea play`
            try:
                os.chdir(REPO)
                os.execve(sys.executable, [sys.executable, "-m", "cli.main", "play", *args], environment)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.position = 0
        self.status: int | None = None

    def read_some(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, 65536) or b"\0"
        except OSError:   # EIO: the child closed the terminal
            return b"\0"

    def expect(self, text: str, timeout: float = 90.0) -> str:
        """Wait until `text` appears after what earlier expects consumed; return the output in between."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while needle not in self.output[self.position:]:
            remaining = deadline - time.monotonic()
            chunk = self.read_some(max(remaining, 0))
            if remaining <= 0 or chunk == b"\0":
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.output[-3000:].decode(errors='replace')}")
            self.output += chunk
        end = self.output.index(needle, self.position) + len(needle)
        seen, self.position = self.output[self.position:end].decode(errors="replace"), end
        return seen

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = self.read_some(0.1)
            if chunk not in (b"", b"\0"):
                self.output += chunk
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"bwarea play did not exit; it shows:\n{self.output[-2000:].decode(errors='replace')}")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]

    yield start
    for session in opened:
        session.close()


def test_textworld_in_a_terminal_to_the_win(terminal, tw_cache, tmp_path):
    walkthrough = GameCache(tw_cache).get("coin-easy", game_seed("train", 1)).meta["walkthrough"]
    play = terminal("--env", "textworld/coin-easy", "--split", "train", "--seed", "1",
                    "--textworld_cache_dir", str(tw_cache), "--out", str(tmp_path))
    screen = play.expect("\n> ")
    play.send(":help\n")
    assert ":actions" in play.expect("\n> ")
    # the first command by its number in the listed actions
    listed = re.findall(r"(\d+)\) ([^\n]+?)(?=  \d+\)|\r?\n)", screen.rsplit("Actions:", 1)[1])
    number = next(n for n, action in listed if action.strip() == walkthrough[0])
    play.send(f"{number}\n")
    assert f"[{walkthrough[0]}]" in play.expect("\n> ")
    for command in walkthrough[1:]:
        play.send(f"{command}\n")
        play.expect(f"[{command}]")
    play.expect("Game won. Score 1/1.")
    play.expect("Episode (won) saved to")
    assert play.wait() == 0
    episode = json.loads((tmp_path / "episode.json").read_text())
    assert [step["action"] for step in episode["trajectory"]] == walkthrough
    assert (episode["won"], episode["player"], episode["ended"], episode["env_seed"]) == (True, "human", "won", 1)


def test_crafter_in_a_terminal_saves_frames_and_the_episode_at_end_of_input(terminal, tmp_path):
    frames = tmp_path / "frames"
    play = terminal("--env", "crafter", "--seed", "0", "--frames", str(frames), "--frame_size", "64",
                    "--out", str(tmp_path / "out"))
    assert "move west" in play.expect("\n> ")        # the 17 actions are listed once
    play.send("move left\n")                          # Crafter's own parser reads names loosely
    play.expect("[move west]")
    play.expect("\n> ")
    play.send("6\n")                                  # action 6 of the list: do
    play.expect("[do]")
    play.expect("\n> ")
    play.send("\x04")                                 # Ctrl-D: end of input
    play.expect("Episode (end of input) saved to")
    assert play.wait() == 0
    episode = json.loads((tmp_path / "out" / "episode.json").read_text())
    assert [step["action"] for step in episode["trajectory"]] == ["move left", "do"]
    assert episode["ended"] == "end of input" and episode["env_seed"] == 2_000_000 and episode["steps"] == 2
    pictures = sorted(frames.glob("step-*.png"))
    assert [p.name for p in pictures] == ["step-00000.png", "step-00001.png", "step-00002.png"]
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (64, 64)


def test_ctrl_c_with_agent_suggestions_exits_cleanly_with_the_episode(terminal, tw_cache, tmp_path):
    play = terminal("--env", "textworld/coin-easy", "--split", "train", "--seed", "0", "--agent", "walkthrough",
                    "--textworld_cache_dir", str(tw_cache), "--out", str(tmp_path))
    walkthrough = GameCache(tw_cache).get("coin-easy", game_seed("train", 0)).meta["walkthrough"]
    play.expect(f"Suggestion (walkthrough): {walkthrough[0]}")
    play.expect("\n> ")
    play.send("\n")                                   # an empty line takes the suggestion
    play.expect(f"[{walkthrough[0]}]")
    play.expect(f"Suggestion (walkthrough): {walkthrough[1]}")
    play.expect("\n> ")
    # as a person would: not within microseconds of the prompt. A SIGINT that lands after readline printed the
    # prompt but before it waits for input is only seen at the next key (CPython's readline loop)
    time.sleep(0.5)
    os.kill(play.pid, signal.SIGINT)                  # Ctrl-C (what the terminal driver sends for ^C)
    play.expect("Episode (interrupted) saved to")
    assert play.wait() == 130
    assert "Traceback" not in play.output.decode(errors="replace")
    episode = json.loads((tmp_path / "episode.json").read_text())
    assert episode["ended"] == "interrupted" and episode["steps"] == 1
    assert episode["trajectory"][0] == {**episode["trajectory"][0], "action": walkthrough[0], "suggestion": walkthrough[0]}


def test_watch_shows_each_dag_node_and_the_latent_action_per_token(tiny_bwarea_dir, tw_cache, tmp_path,  # noqa: F811
                                                                   one_torch_thread):
    agent = {"backend": {"type": "bwarea", "model": str(tiny_bwarea_dir)},
             "agent": {"type": "dag", "max_tokens": 3, "fallback_action": "look",
                       "dag": {"name": "tiny", "nodes": [{"id": "look", "question": "What is here?"},
                                                         {"id": "choose", "question": "Pick a command.",
                                                          "parents": ["look"]}]}}}
    config = PlayConfig(env="textworld/coin-easy", split="train", agent=agent, watch=True, max_steps=2,
                        textworld_cache_dir=str(tw_cache), out=str(tmp_path))
    screen = io.StringIO()
    assert Session(config, input_stream=io.StringIO("\n\n"), output=screen).run() == 0
    shown = screen.getvalue()
    assert shown.count("[look] What is here?") == 2 and shown.count("[choose] Pick a command.") == 2
    assert shown.count("latent action per token: ") == 4 and "Agent action: look" in shown
    assert "Game out of steps." in shown
    assert f"The agent's language model: bwarea:{tiny_bwarea_dir} on " in shown     # cpu here, the GPU where one is
    episode = json.loads((tmp_path / "episode.json").read_text())
    assert episode["player"] == "agent" and episode["truncated"] and episode["steps"] == 2
    tokens = sum(len(node["metadata"]["actions"]) for trace in episode["traces"] for node in trace["nodes"])
    assert tokens == sum(episode["latent_actions"].values()) > 0


def test_a_bbh_answer_by_number_is_scored(bbh_dir, tmp_path):
    config = PlayConfig(env="bbh/navigate", seed=2, bbh_data_dir=str(bbh_dir), out=str(tmp_path))
    screen = io.StringIO()
    assert Session(config, input_stream=io.StringIO("1\n"), output=screen).run() == 0
    episode = json.loads((tmp_path / "episode.json").read_text())
    assert episode["trajectory"][0]["action"] == "Yes"
    verdict = "correct" if episode["target"] == "Yes" else "wrong; the answer is No"
    assert f"Answer: 'Yes' -> {verdict}." in screen.getvalue()
    assert episode["correct"] == (episode["target"] == "Yes")


def test_bad_options_are_refused_with_one_sentence(capsys):
    assert main(["--env", "crafter", "--watch", "true"]) == 2
    assert "--watch shows an agent playing; name one with --agent" in capsys.readouterr().err
    assert main(["--env", "textworld/coin-easy", "--frames", "x"]) == 2
    assert "--frames saves Crafter's pictures" in capsys.readouterr().err
    assert main(["--env", "crafter/easy"]) == 2
    assert "unknown environment 'crafter/easy'" in capsys.readouterr().err


def test_an_unwritable_output_is_refused_before_the_game_starts(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--env", "crafter", "--out", str(blocker / "play")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bwarea play: cannot write to") and err.count("\n") == 1
