"""Static-shape decoding steps (generate(static_cache=True / compile=...)) against the dynamic cache path."""

import pytest
import torch
import torch._dynamo.testing

import bwarea.generation as generation
from bwarea import ARConfig, ARLanguageModel, BWAreaModel
from bwarea.cola import CoLAModel
from bwarea.transformer import KVCache
from tests.bwarea.test_model import VOCAB, tiny_config


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config()
    if kind == "bwarea":
        return BWAreaModel(config).eval()
    ar = ARLanguageModel(ARConfig.matching(config)).eval()
    if kind == "ar":
        return ar
    model = CoLAModel.from_lm(ar, num_actions=16, inverse_layers=1, policy_layers=2).eval()
    for merge in model.world.merges:  # a trained merge: the action must change the tokens
        torch.nn.init.normal_(merge.down.weight, std=0.5)
    return model


@pytest.fixture(scope="module", params=["bwarea", "ar", "cola"])
def model(request):
    return build(request.param)


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 9, 4 and 1, left padded to 9."""
    ids = torch.randint(2, VOCAB, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :5] = mask[2, :8] = 0
    return ids.masked_fill(mask == 0, 0), mask


def assert_same_generation(static, dynamic):
    assert torch.equal(static.tokens, dynamic.tokens)
    assert torch.equal(static.actions, dynamic.actions)
    assert torch.equal(static.mask, dynamic.mask) and torch.equal(static.finished, dynamic.finished)
    assert torch.allclose(static.action_log_probs, dynamic.action_log_probs, atol=1e-5)


@pytest.mark.parametrize("prompt_actions", ["inverse", "policy"])
def test_static_steps_equal_the_dynamic_cache_on_a_left_padded_batch(model, prompt_actions, monkeypatch):
    ids, mask = left_padded_batch()
    options = dict(max_new_tokens=10, temperature=0.0, eos_token_id=[], prompt_actions=prompt_actions)
    dynamic = model.generate(ids, mask, static_cache=False, **options)
    static_steps, reserve_token = [], KVCache.reserve_token
    monkeypatch.setattr(KVCache, "reserve_token", lambda cache: static_steps.append(cache) or reserve_token(cache))
    static = model.generate(ids, mask, static_cache=True, **options)
    caches = 1 if isinstance(model, ARLanguageModel) else 2  # BWArea: policy + world model; CoLA: LM + policy
    assert len(static_steps) == caches * 9  # every token after the first came from a static step
    assert_same_generation(static, dynamic)
    assert len(set(dynamic.tokens.flatten().tolist())) > 5  # a real continuation, not one repeated token
    # a single-token prompt starts stepping at once (its prompt call already is a static step)
    assert_same_generation(model.generate(ids[2:, -1:], static_cache=True, **options),
                           model.generate(ids[2:, -1:], static_cache=False, **options))


def test_static_steps_sample_like_the_dynamic_cache(model):
    ids, mask = left_padded_batch()
    options = dict(max_new_tokens=8, temperature=1.5, top_k=10, eos_token_id=[], report_top=3)
    dynamic = model.generate(ids, mask, static_cache=False, generator=torch.Generator().manual_seed(3), **options)
    static = model.generate(ids, mask, static_cache=True, generator=torch.Generator().manual_seed(3), **options)
    assert_same_generation(static, dynamic)
    assert torch.equal(static.top_choices, dynamic.top_choices)


def test_static_steps_stop_on_eos_and_stop_strings_like_the_dynamic_cache():
    model = build("bwarea")
    ids, mask = left_padded_batch()
    free = model.generate(ids, mask, max_new_tokens=8, temperature=0.0, eos_token_id=[])
    eos = int(free.tokens[0, 3])

    class CharTokenizer:
        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    stop = CharTokenizer().decode(free.tokens[1, 1:3].tolist())
    options = dict(max_new_tokens=8, temperature=0.0, eos_token_id=eos, stop_strings=[stop], tokenizer=CharTokenizer())
    dynamic = model.generate(ids, mask, static_cache=False, **options)
    static = model.generate(ids, mask, static_cache=True, **options)
    assert_same_generation(static, dynamic)
    assert bool(static.finished[0]) and bool(static.finished[1]) and not bool(static.mask[0, 4:].any())


def test_static_caches_take_over_the_buffers_of_finished_ones():
    """CUDA graphs replay on fixed addresses: the next generate call must step on the same buffers."""
    model = build("bwarea")
    ids, mask = left_padded_batch()

    def static_buffer_addresses():
        decoder = model.decoder(ids, mask, 16)
        decoder.make_static(None)
        caches = (decoder.policy_cache, decoder.world_cache)
        return [[buffer.data_ptr() for buffer in (*cache.keys, *cache.values, cache.valid, cache.slot)] for cache in caches]

    first = static_buffer_addresses()
    assert static_buffer_addresses() == first  # each cache gets its own buffers back, not its twin's
    decoder = model.decoder(ids, mask, 16)
    decoder.make_static(None)
    decoder.world_cache.valid.fill_(True)
    decoder.world_cache.next_position.fill_(5)
    del decoder
    reused = model.decoder(ids, mask, 16)
    reused.make_static(None)
    assert reused.world_cache.valid.data_ptr() == first[1][-2]
    assert not bool(reused.world_cache.valid.any()) and not bool(reused.world_cache.next_position.any())


def test_static_cache_needs_room_in_the_rotary_tables():
    """Past max_position_embeddings the static path is off, so the dynamic path's clear error still comes."""
    model = build("ar")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(torch.full((1, 120), 5), max_new_tokens=20, temperature=0.0, eos_token_id=[], static_cache=True)


def test_a_static_cache_longer_than_the_rotary_tables_is_refused():
    trunk = build("ar").trunk
    cache = trunk.new_cache(1, 129)
    cache.make_static(trunk)
    with pytest.raises(ValueError, match="static KV cache of 129 slots exceeds max_position_embeddings=128"):
        trunk(torch.full((1, 1), 5), None, cache)


def test_bad_compile_options_are_rejected():
    model = build("ar")
    with pytest.raises(ValueError, match="compile must be True, False or a torch.compile mode"):
        model.generate(torch.full((1, 3), 5), max_new_tokens=2, compile="fastest")
    with pytest.raises(ValueError, match="compile needs static-shape steps"):
        model.generate(torch.full((1, 3), 5), max_new_tokens=2, compile=True, static_cache=False)


@pytest.fixture
def counting_compiler(monkeypatch):
    """torch.compile with a backend that counts graphs and runs them eagerly (fullgraph kept)."""
    counter = torch._dynamo.testing.CompileCounter()
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, mode, fullgraph: compile_(function, backend=counter,
                                                                                    fullgraph=fullgraph))
    generation._compiled.cache_clear()
    torch._dynamo.reset()
    yield counter
    generation._compiled.cache_clear()
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["bwarea", "ar", "cola"])
def test_compiled_steps_trace_whole_and_once_per_shape(counting_compiler, kind):
    model = build(kind)
    ids, mask = left_padded_batch()
    options = dict(max_new_tokens=6, temperature=0.0, eos_token_id=[])
    expected = model.generate(ids, mask, **options)
    assert_same_generation(model.generate(ids, mask, compile=True, **options), expected)
    graphs = counting_compiler.frame_count
    assert graphs == (1 if kind == "ar" else 2)  # one graph per step function, no breaks (fullgraph)
    # later steps, later calls and other prompts of the same batch size reuse them: slots are tensors
    again = model.generate(ids[:, 2:], mask[:, 2:], compile=True, **options)
    assert_same_generation(again, model.generate(ids[:, 2:], mask[:, 2:], **options))
    assert counting_compiler.frame_count == graphs


@pytest.mark.slow
def test_inductor_compiled_steps_equal_eager():
    model = build("ar")
    ids, mask = left_padded_batch()
    options = dict(max_new_tokens=8, temperature=0.0, eos_token_id=[])
    assert_same_generation(model.generate(ids, mask, compile=True, **options), model.generate(ids, mask, **options))
