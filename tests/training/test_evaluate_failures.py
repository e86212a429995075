"""`bwarea evaluate` against real HTTP servers on 127.0.0.1 that fail: a server that dies mid-run (circuit
breaker, exit status, replay of the faulted episode once it is back), a wrong port, a bad config (nothing
written) and a server echoing the API key in its 401 body (the key reaches no file)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from cli.evaluate import main
from evaluation.config import EPISODES_FILE
from evaluation.records import read_episodes
from evaluation.report import summarize
from tests.agents.conftest import ChatServer

SECRET = "sk-live-abcdef0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def direct_agent(base_url: str, **backend) -> str:
    return json.dumps({"backend": {"type": "openai", "base_url": base_url, "model": "scripted", "max_retries": 0,
                                   "backoff_s": 0.01, "timeout_s": 2.0, **backend},
                       "agent": {"type": "direct", "max_tokens": 8, "fallback_action": "noop"}})


def run(out: Path, agent: str, *extra: str) -> int:
    return main(["--agent", agent, "--suite", "crafter", "--episodes", "3", "--seeds", "0", "--max_steps", "4",
                 "--batch_size", "1", "--progress", "false", "--plots", "false", "--max_failed_rounds", "2",
                 "--out", str(out), *extra])


def test_a_server_dying_mid_run_trips_the_breaker_and_faulted_episodes_are_replayed(tmp_path, capsys):
    port = free_port()
    server = ChatServer(port).start()
    server.reply = lambda body: "Action: move west"
    count = 0

    def fault(body):
        # request 1: health check; 2-5: episode 0 (request 3 fails: a faulted episode); 6-9: episode 1;
        # 10: episode 2's first step; 11: the server dies
        nonlocal count
        count += 1
        if count == 3:
            return "500"
        if count == 11:
            threading.Thread(target=server.stop).start()
            return "drop"
        return None

    server.fault = fault
    out = tmp_path / "eval"
    agent = direct_agent(server.base_url)
    assert run(out, agent) == 3
    error = capsys.readouterr().err
    assert f"openai:{server.base_url}:scripted failed 2 consecutive rounds" in error
    assert "last error: " in error and "/v1/chat/completions" in error       # the last failure, as it happened
    records = read_episodes(out / EPISODES_FILE)
    assert [(r["episode"], r["faulted"]) for r in records] == [(0, True), (1, False)]   # episode 2 not recorded
    assert records[0]["agent_stats"]["provenance"] == {"exact": 3, "fallback": 1}
    assert not (out / "summary.json").exists()

    back = ChatServer(port).start()          # the same server comes back
    back.reply = lambda body: "Action: move west"
    try:
        assert run(out, agent) == 0
    finally:
        back.stop()
    records = read_episodes(out / EPISODES_FILE)
    assert [(r["episode"], r["faulted"]) for r in records] == [(0, True), (1, False), (0, False), (2, False)]
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["environments"]["crafter"]
    assert summary["complete"] and entry["completed"] == 3 and entry["faulted"] == 0
    assert entry["agent"]["provenance"] == {"exact": 12}
    assert len(back.requests) == 1 + 4 + 4         # health check, episode 0 again, episode 2 (batches of one)


def test_kept_faulted_episodes_count_and_are_reported(tmp_path):
    records = [{"env": "crafter", "seed": 0, "episode": 0, "error": None, "faulted": True, "achievements": [],
                "return": 0.0, "steps": 3, "agent_stats": {"faults": 1, "provenance": {"fallback": 1, "word": 2}},
                "latent_actions": {}}]
    settings = {"suite": ["crafter"], "seeds": [0], "environments": {"crafter": {"episodes": 1}}}
    entry = summarize(records, settings)["environments"]["crafter"]
    assert entry["faulted"] == 1 and entry["agent"]["provenance"] == {"fallback": 1, "word": 2}


def test_a_wrong_port_or_a_bad_config_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(out, direct_agent(f"http://127.0.0.1:{free_port()}/v1")) == 3
    assert "health check of openai:http://127.0.0.1:" in capsys.readouterr().err
    assert not out.exists()
    bad = json.dumps({"agent": {"type": "direct", "max_tokenz": 8},
                      "backend": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}})
    assert run(out, bad) == 2
    assert "unknown key(s) max_tokenz" in capsys.readouterr().err and not out.exists()


def test_an_api_key_echoed_by_the_server_reaches_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BWAREA_TEST_KEY", SECRET)
    server = ChatServer().start()
    server.fault = lambda body: "401" if len(server.requests) == 3 else None
    try:
        out = tmp_path / "eval"
        assert run(out, direct_agent(server.base_url, api_key_env="BWAREA_TEST_KEY"), "--keep_faulted", "true") == 0
    finally:
        server.stop()
    assert all(headers["Authorization"] == f"Bearer {SECRET}" for _, _, headers in server.requests)
    stored = read_episodes(out / EPISODES_FILE)[0]
    assert stored["faulted"] and "HTTP 401" in stored["faults"][0] and "[redacted]" in stored["faults"][0]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and b"abcdef0123456789" not in data, path


def test_progress_is_reported_after_every_environment_step():
    import agents
    import envs
    from evaluation.plan import Unit
    from evaluation.records import play_batch

    steps: list[list[int]] = []
    records: list[dict] = []
    environments = [envs.make("crafter", max_steps=3), envs.make("crafter", max_steps=5)]
    play_batch(agents.RandomAgent(), environments, Unit("crafter", 0, 0, [0, 1], [2_000_000, 2_000_001]), "none",
               records.append, lambda traces: steps.append([t.env_index for t in traces]))
    assert steps == [[0, 1]] * 3 + [[1]] * 2          # one call per step, with the environments that acted
    assert [r["steps"] for r in records] == [3, 5] and all(not r["faulted"] for r in records)


def test_bad_input_is_one_line_and_a_busy_or_unwritable_output_is_refused_before_any_work(tmp_path, capsys):
    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("bwarea evaluate: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    crafter = ["--agent", "random", "--suite", "crafter", "--episodes", "1", "--max_steps", "2", "--progress", "false"]
    assert "did you mean --suite" in refused("--suit", "crafter")
    assert "did you mean crafter?" in refused("--suite", "craftr")
    config = tmp_path / "broken.yaml"
    config.write_text("suite: [crafter\n")
    assert str(config) in refused("--config", str(config))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot write to" in refused(*crafter, "--out", str(blocker / "out"))

    out = tmp_path / "busy"
    from common.files import DirectoryLock

    with DirectoryLock(out):   # another evaluation writing into the same --out
        assert "in use by another running command" in refused(*crafter, "--out", str(out))
    assert not out.exists()
    assert main([*crafter, "--out", str(out)]) == 0 and len(read_episodes(out / EPISODES_FILE)) == 1


def test_an_evaluation_writing_to_a_file_prints_progress_lines_with_the_step_counters(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BWAREA_PROGRESS_EVERY", "0.000001")
    assert main(["--agent", "random", "--suite", "crafter", "--episodes", "2", "--max_steps", "3", "--batch_size", "2",
                 "--out", str(tmp_path / "out"), "--plots", "false"]) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("evaluate: ")]
    assert progress[0].startswith("evaluate: 0/2 episodes (0%)") and "step 2, parsed 0, fallbacks 0" in progress[0]
    assert progress[-1].startswith("evaluate: 2/2 episodes after ") and "step 6" in progress[-1]
    assert not any("\r" in line for line in lines)
