"""Failing loudly (health check, circuit breaker, redacted errors) and valid actions by construction
(answer_format: choice) with real HTTP servers on 127.0.0.1 and real tiny models."""

from __future__ import annotations

import math

import pytest
import torch

import bwarea
import envs
from agents import make_agent
from agents.http_backend import OpenAIBackend, OpenAIConfig, redact
from agents.llm import BackendUnavailable, CompletionRequest, Message
from agents.transformers_backend import TransformersBackend, TransformersConfig
from envs.crafter import ACTIONS
from tests.agents.conftest import save_tiny_llama
from tests.agents.test_http_backend import CHAT, backend_for, closed_port

SECRET = "sk-live-0123456789abcdef"


def test_health_check_names_the_server_and_the_failure():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    backend = OpenAIBackend(OpenAIConfig(base_url=url, model="m", max_retries=1, backoff_s=0.01, timeout_s=1.0))
    with pytest.raises(BackendUnavailable, match=rf"health check of openai:{url}:m failed: cannot reach {url}"):
        backend.check()


def test_health_check_passes_on_a_working_server(chat_server):
    backend_for(chat_server).check()
    [(path, body, _)] = chat_server.requests
    assert path == "/v1/chat/completions" and body["max_tokens"] == 1


def test_circuit_breaker_trips_after_consecutive_failed_rounds(chat_server):
    backend = backend_for(chat_server, max_retries=0)
    backend.max_failed_rounds = 2
    chat_server.script = ["500", "ok", "500"]
    assert backend.complete([CHAT])[0].error and backend.complete([CHAT])[0].ok   # a success resets the count
    assert backend.complete([CHAT])[0].error and backend.failed_rounds == 1
    chat_server.fault = lambda body: "500"
    with pytest.raises(BackendUnavailable, match=r"failed 2 consecutive rounds .*last error: HTTP 500"):
        backend.complete([CHAT, CHAT])
    partly = backend_for(chat_server, max_retries=0)
    partly.max_failed_rounds = 1
    chat_server.fault = lambda body: "500" if body["messages"][-1]["content"] == "Where are you?" else None
    other = CompletionRequest(messages=(Message("user", "Anything?"),))
    assert [c.ok for c in partly.complete([CHAT, other])] == [False, True]   # a round with one success is not failed


def test_echoed_credentials_are_redacted_from_errors(chat_server, monkeypatch):
    monkeypatch.setenv("BWAREA_TEST_KEY", SECRET)
    chat_server.fault = lambda body: "401"
    [completion] = backend_for(chat_server, api_key_env="BWAREA_TEST_KEY").complete([CHAT])
    assert "HTTP 401" in completion.error and "[redacted]" in completion.error
    assert SECRET not in completion.error and "0123456789abcdef" not in completion.error
    assert chat_server.requests[0][2]["Authorization"] == f"Bearer {SECRET}"    # the server did get the key


@pytest.mark.parametrize("text", [
    '{"headers": {"Authorization": "Bearer abc.def-123"}}', "authorization: Bearer abc.def-123",
    "api_key=abc.def-123", '"x-api-key": "abc.def-123"', "token abc.def-123",
])
def test_redact_removes_credential_shapes(text):
    assert "abc.def-123" not in redact(text) and "[redacted]" in redact(text)
    assert redact("nothing secret here: HTTP 500") == "nothing secret here: HTTP 500"


# ----------------------------------------------------------------------------------------------
# answer_format: choice

@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama_choice"), tiny_tokenizer, hidden_size=64,
                           intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=2048)


def log_likelihood(backend: TransformersBackend, prompt_ids: list[int], option: str) -> float:
    """log p(option | prompt) by one plain forward pass over prompt + option (no cache, no batching)."""
    option_ids = backend.tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(backend.model(ids).logits[0].float(), dim=-1)
    return sum(float(log_probs[len(prompt_ids) - 1 + j, token]) for j, token in enumerate(option_ids))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_choice_picks_the_highest_likelihood_option(tiny_llama_dir, share_prefix):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), share_prefix=share_prefix,
                                                     min_shared_prefix=4))
    requests = [CompletionRequest(messages=(Message("system", "You play Crafter."), Message("user", question)))
                for question in ("You see a tree to your west. Which action?", "Your food is low. What now?")]
    choices = backend.choose(requests, [list(ACTIONS), ["noop", "do", "sleep"]])
    for request, choice, options in zip(requests, choices, [ACTIONS, ("noop", "do", "sleep")]):
        text, templated = backend.render(request)
        prompt_ids = backend.tokenizer(text, add_special_tokens=not templated)["input_ids"]
        expected = {option: log_likelihood(backend, prompt_ids, option) for option in options}
        assert choice.option == max(expected, key=expected.get) and choice.option in options
        assert set(choice.scores) == set(options)
        assert all(math.isclose(choice.scores[o], expected[o], abs_tol=1e-3) for o in options)
        assert choice.completion.finish_reason == "choice" and choice.completion.text == choice.option
    assert backend.rounds == 1 and backend.usage.requests == 2


def brute_force_log_likelihood(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """log p(option | prompt) of our own model, one unpadded row: the AR model's next-token likelihood, or for a
    latent-action model the policy-marginalised world likelihood at each option token (history labelled by the
    inverse dynamics), summed in float64 action by action."""
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        policy = model.policy_logits(ids)[0].double().log_softmax(-1)
        total = 0.0
        for j, token in enumerate(option_ids):
            t = len(prompt_ids) - 1 + j
            if not bwarea.has_latent_actions(model):
                total += float(policy[t, token])
                continue
            terms = [float(policy[t, a]) + float(model.two_stream_logits(ids, torch.full((ids.shape[1],), a))[0, t]
                                                 .double().log_softmax(-1)[token])
                     for a in range(model.config.num_actions)]
            total += math.log(sum(math.exp(x) for x in terms))
    return total


@pytest.mark.parametrize("model_dir", ["tiny_bwarea_dir", "tiny_ar_dir"])
def test_own_model_choice_scores_the_simulated_llm_likelihood(model_dir, request):
    from agents.bwarea_backend import BWAreaBackend, BWAreaBackendConfig

    backend = BWAreaBackend(BWAreaBackendConfig(model=str(request.getfixturevalue(model_dir))))
    options = ["noop", "move_left", "do", "place_table"]    # different lengths: right padding must not leak
    question = CompletionRequest(prompt="You see a tree to your west. Action:")
    [choice] = backend.choose([question], [options])
    prompt_ids = backend.tokenizer(question.prompt)["input_ids"]
    expected = {o: brute_force_log_likelihood(backend.model, prompt_ids, backend.tokenizer(o, add_special_tokens=False)["input_ids"])
                for o in options}
    assert all(math.isclose(choice.scores[o], expected[o], abs_tol=1e-3) for o in options), (choice.scores, expected)
    assert choice.option == max(expected, key=expected.get) and choice.completion.finish_reason == "choice"
    assert backend.rounds == 1


def test_choice_follows_a_known_preference(tiny_llama_dir):
    """A model whose output layer is biased toward one option's tokens must pick that option."""
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir)))
    favourite = "sleep"
    with torch.no_grad():
        backend.model.lm_head.weight.zero_()
        bias = torch.zeros(backend.model.config.vocab_size)
        bias[backend.tokenizer(favourite, add_special_tokens=False)["input_ids"]] = 5.0
        backend.model.lm_head.bias = torch.nn.Parameter(bias)
    request = CompletionRequest(messages=(Message("user", "Pick an action."),))
    [choice] = backend.choose([request], [list(ACTIONS)])
    assert choice.option == favourite and choice.scores[favourite] == max(choice.scores.values())


def test_spring_with_choice_always_plays_a_valid_action(tiny_llama_dir):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir)))
    agent = make_agent("spring", backend=backend, overrides={"agent": {
        "answer_format": "choice", "max_tokens": 2, "context": {"read": False, "max_chars": 100},
        "dag": {"nodes": [{"id": "look", "question": "What do you see?"},
                          {"id": "choose", "question": "Choose one of: {actions}.", "parents": ["look"]}]}}})
    batch = envs.make_batch("crafter", 2)
    observations, infos = batch.reset([0, 1])
    agent.reset_batch(infos)
    for _ in range(3):
        actions = agent.act_batch(observations, infos)
        assert all(action in ACTIONS for action in actions)
        assert all(t.parse_method == "choice" and t.provenance == "choice" and not t.fallback for t in agent.last_traces)
        assert all(t.nodes[-1].metadata["choice_scores"] for t in agent.last_traces)
        observations, _, _, _, infos = batch.step(actions)
    assert agent.stats.provenance == {"choice": 6}


def test_choice_over_http_uses_logprobs_and_falls_back_to_text_without_them(chat_server):
    chat_server.top_logprobs = lambda body: [("C", -0.1), (" A", -2.5), ("Z", -3.0), ("B", -4.0)]
    backend = backend_for(chat_server)
    [choice] = backend.choose([CHAT], [["noop", "move west", "do"]])
    assert choice.option == "do" and choice.scores == {"do": -0.1, "noop": -2.5, "move west": -4.0}
    assert choice.completion.text == "do" and choice.completion.finish_reason == "choice"
    _, body, _ = chat_server.requests[-1]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert "A) noop\nB) move west\nC) do" in body["messages"][-1]["content"]
    chat_server.top_logprobs = None                      # a server without logprobs: free text from then on
    assert backend.choose([CHAT], [["noop", "do"]]) == [None] and backend.offers_logprobs is False
    sent = len(chat_server.requests)
    assert backend.choose([CHAT], [["noop", "do"]]) == [None] and len(chat_server.requests) == sent
