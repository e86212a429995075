"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1, faults included."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

import envs
from agents import make_agent
from agents.http_backend import OpenAIBackend, OpenAIConfig
from agents.llm import CompletionRequest, Message

CHAT = CompletionRequest(messages=(Message("system", "You play a game."), Message("user", "Where are you?")),
                         max_tokens=16)


def backend_for(server, **options) -> OpenAIBackend:
    settings = dict(base_url=server.base_url, model="scripted", timeout_s=2.0, max_retries=2, backoff_s=0.01,
                    max_backoff_s=0.05, concurrency=4)
    settings.update(options)
    return OpenAIBackend(OpenAIConfig(**settings))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_chat_and_raw_completions_report_text_and_usage(chat_server, monkeypatch):
    monkeypatch.setenv("BWAREA_TEST_KEY", "sk-test-secret")
    backend = backend_for(chat_server, api_key_env="BWAREA_TEST_KEY")
    chat, raw = backend.complete([CHAT, CompletionRequest(prompt="Objective: find the coin\n> ", max_tokens=8)])
    assert chat.ok and chat.text == "The player sees grass and a tree."
    assert (chat.tokens_in, chat.tokens_out) == (7, 7)        # the server counts words
    assert raw.ok and raw.tokens_in == 5
    by_path = {path: (body, headers) for path, body, headers in chat_server.requests}   # sent concurrently
    assert sorted(by_path) == ["/v1/chat/completions", "/v1/completions"]
    body, headers = by_path["/v1/chat/completions"]
    assert body["model"] == "scripted" and body["max_tokens"] == 16 and body["messages"][1]["content"] == "Where are you?"
    assert headers["Authorization"] == "Bearer sk-test-secret"
    assert backend.usage.tokens_in == 12 and backend.usage.requests == 2 and backend.rounds == 1
    assert "sk-test-secret" not in repr(backend) and "sk-test-secret" not in str(vars(backend.config))


def test_the_backend_names_its_server_and_model(chat_server):
    assert backend_for(chat_server).where() == f"model 'scripted' on the server at {chat_server.base_url}"


def test_missing_api_key_variable_is_a_clear_error(chat_server, monkeypatch):
    monkeypatch.delenv("BWAREA_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="BWAREA_ABSENT_KEY"):
        backend_for(chat_server, api_key_env="BWAREA_ABSENT_KEY")


SAMPLED_CHAT = dataclasses.replace(CHAT, temperature=0.7)


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "empty", "slow", "drop"])
def test_transient_faults_are_retried(chat_server, fault):
    chat_server.script = [fault]
    chat_server.slow_s = 0.6
    backend = backend_for(chat_server, timeout_s=0.3)
    [completion] = backend.complete([SAMPLED_CHAT])
    assert completion.ok, completion.error
    assert completion.attempts == 2 and completion.text == "The player sees grass and a tree."
    assert len(chat_server.requests) == 2


def test_persistent_faults_end_in_a_recorded_error(chat_server):
    chat_server.fault = lambda body: "500"
    backend = backend_for(chat_server, max_retries=3)
    [completion] = backend.complete([CHAT])
    assert not completion.ok and completion.finish_reason == "error" and completion.text == ""
    assert "HTTP 500" in completion.error and completion.attempts == 4 and len(chat_server.requests) == 4
    assert backend.usage.errors == 1


def test_empty_content_is_an_answer_never_an_error(chat_server):
    chat_server.fault = lambda body: "empty"
    [sampled] = backend_for(chat_server).complete([SAMPLED_CHAT])
    assert sampled.ok and sampled.text == "" and sampled.attempts == 3       # asked again while retries last
    [greedy] = backend_for(chat_server).complete([CHAT])
    assert greedy.ok and greedy.text == "" and greedy.attempts == 1          # the same prompt gives the same answer
    [unretried] = backend_for(chat_server, retry_empty=False).complete([SAMPLED_CHAT])
    assert unretried.ok and unretried.attempts == 1
    assert len(chat_server.requests) == 3 + 1 + 1


def test_client_errors_are_not_retried(chat_server):
    chat_server.script = ["400"]
    [completion] = backend_for(chat_server).complete([CHAT])
    assert "HTTP 400" in completion.error and completion.attempts == 1 and len(chat_server.requests) == 1


def test_connection_refused_is_retried_then_reported():
    backend = OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", max_retries=2,
                                         backoff_s=0.01, timeout_s=1.0))
    [completion] = backend.complete([CHAT])
    assert not completion.ok and "cannot reach" in completion.error and completion.attempts == 3


def test_backoff_grows_exponentially_and_honours_the_cap(chat_server):
    backend = backend_for(chat_server, backoff_s=0.1, max_backoff_s=0.3)
    waits = [backend._backoff(attempt, None) for attempt in (1, 2, 3, 4)]
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2 and all(0.15 <= w <= 0.3 for w in waits[2:])
    assert backend._backoff(1, 10.0) == 0.3       # a server's Retry-After, capped


def test_concurrency_limit_is_respected(chat_server):
    chat_server.fault = lambda body: "slow"
    chat_server.slow_s = 0.15
    backend = backend_for(chat_server, concurrency=2)
    start = time.perf_counter()
    completions = backend.complete([CHAT] * 6)
    assert all(c.ok for c in completions)
    assert chat_server.max_in_flight == 2
    assert time.perf_counter() - start >= 3 * 0.15


def test_stop_strings_are_sent_and_applied(chat_server):
    chat_server.reply = lambda body: "go east\n> take coin"
    [completion] = backend_for(chat_server).complete([CompletionRequest(prompt="> ", stop=("\n",))])
    assert completion.text == "go east" and chat_server.requests[0][1]["stop"] == ["\n"]


def spring_with(server_url: str, **agent_options):
    config = {"backend": {"type": "openai", "base_url": server_url, "model": "scripted", "timeout_s": 0.3,
                          "max_retries": 1, "backoff_s": 0.01},
              "agent": {"context": None, **agent_options}}
    return make_agent("spring", overrides=config)


def play(agent, steps: int, n_envs: int = 2):
    batch = envs.make_batch("crafter", n_envs)
    observations, infos = batch.reset(list(range(n_envs)))
    agent.reset_batch(infos)
    traces = []
    for _ in range(steps):
        actions = agent.act_batch(observations, infos, [not done for done in batch.done])
        traces += agent.last_traces
        assert all(action in envs.crafter.ACTIONS for action in actions)
        observations, _, _, _, infos = batch.step(actions)
    return traces


def test_spring_agent_over_http_parses_the_choice(chat_server):
    agent = spring_with(chat_server.base_url)
    traces = play(agent, steps=2)
    assert [t.action for t in traces] == ["move west"] * 4      # "Do not sleep ... Action: move_left" (an alias)
    assert all(t.parse_method == "exact" and not t.fallback and not t.faults for t in traces)
    assert all(len(t.nodes) == 9 and t.rounds == 7 for t in traces)
    assert len(chat_server.requests) == 2 * 2 * 9
    assert agent.stats.tokens_in == sum(t.tokens_in for t in traces) > 0


def test_spring_agent_survives_every_kind_of_fault(chat_server):
    modes = iter(["500", "slow", "malformed", "empty", "drop", "ok"] * 100)
    chat_server.fault = lambda body: next(modes)
    chat_server.slow_s = 0.5
    agent = spring_with(chat_server.base_url)
    traces = play(agent, steps=2)
    assert all(t.faults for t in traces)                        # some node failed in every step
    for trace in traces:
        sink = trace.nodes[-1]
        assert sink.node == "choose"
        if sink.error:
            assert trace.action == "noop" and trace.fallback
        for node in trace.nodes:
            assert node.error is None or not node.answer                # a greedy empty answer is not an error
            assert node.attempts == 2 or node.error is None
    nodes = [node for trace in traces for node in trace.nodes]
    assert any(node.error for node in nodes) and any(node.attempts == 2 and not node.error for node in nodes)


def test_unreachable_server_gives_fallback_actions_not_a_crash():
    agent = spring_with(f"http://127.0.0.1:{closed_port()}/v1", fallback_action="noop")
    traces = play(agent, steps=1)
    assert [t.action for t in traces] == ["noop", "noop"]
    assert all(t.fallback and len(t.faults) == 9 for t in traces)
    assert agent.stats.fallbacks == 2 and agent.stats.faults == 2


def test_failed_reading_is_a_recorded_fault_of_the_first_step(chat_server, tmp_path):
    chat_server.fault = lambda body: "500" if "Paragraph:" in body["messages"][-1]["content"] else None
    document = tmp_path / "notes.txt"
    document.write_text("## Trees\nTrees give wood.")
    backend = backend_for(chat_server, max_retries=1)
    agent = make_agent("spring", backend=backend, overrides={"agent": {
        "context": {"document": str(document), "cache_dir": str(tmp_path / "cache")}}})
    first, second = play(agent, steps=2, n_envs=1)
    assert first.faults[0].startswith("context: 6 reading request(s) failed, e.g. HTTP 500")   # 2 relevance + 4 extraction
    assert not second.faults and first.action == "move west"           # the DAG still ran and answered
    assert not list((tmp_path / "cache").glob("*.json"))


def test_direct_chat_agent_over_http(chat_server):
    chat_server.reply = lambda body: "I will walk north.\nmove up"
    agent = make_agent("direct", overrides={"backend": {"type": "openai", "base_url": chat_server.base_url,
                                                        "model": "scripted"}})
    env = envs.make("crafter")
    obs, info = env.reset(seed=0)
    agent.reset(info)
    assert agent.act(obs, info) == "move north"
    trace = agent.last_traces[0]
    assert trace.parse_method == "exact" and trace.rounds == 1 and len(trace.nodes) == 1
    assert trace.nodes[0].question == "" and trace.nodes[0].token_actions() == []   # no DAG, no latent actions
    _, body, _ = chat_server.requests[0]
    system, user = (m["content"] for m in body["messages"])
    assert system == f"You are playing a text game. Objective: {info['task']}"
    assert user.startswith("Recent observations:\nObjective:") and "noop, move west" in user
