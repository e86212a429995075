"""Prompt prefix caching for transformers causal LMs: encode each prompt once, reuse what it shares.

A question DAG's prompts repeat themselves: every node of a step starts with the same system text,
context and recent observations of its environment, a child node's prompt starts with its first
parent's question and answer, and consecutive steps share the system text and context. On a CPU,
where encoding a prompt is compute-bound, re-encoding those prefixes is most of the cost. Here:

- `PrefixCache` keeps the KV caches (batch 1) of the last few encoded prompts; a new prompt copies the
  longest kept prefix it shares and encodes only the tokens after it;
- `batch_inputs` encodes every prompt of a batch this way except its last token, one row after the
  other (so a row also reuses what an earlier row of the same call encoded: the rows of one
  environment share its observations), lays the caches side by side left-padded, and leaves each
  row's last token for `generate`, which then only decodes. Positions come from the attention mask,
  so every row sees exactly its own unpadded prompt: outputs are those of plain left-padded
  generation (tested).

Encoding row by row gives up batched prompt encoding, which on a CPU is compute-bound and gains
little from batching, for reuse across rows and calls, which saves the work outright.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


def shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class PrefixCache:
    """The KV caches (batch 1) of recently encoded prefixes, least recently used dropped first."""

    def __init__(self, model: Any, capacity: int, min_tokens: int) -> None:
        self.model = model
        self.capacity = capacity
        self.min_tokens = min_tokens
        self.entries: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()

    @torch.no_grad()
    def encode(self, prefix: list[int]) -> tuple[DynamicCache, int]:
        """The cache of exactly `prefix` (do not modify it), and how many of its tokens came from a kept entry."""
        key = tuple(prefix)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key], len(prefix)
        reused, source = 0, None
        for tokens, cache in self.entries.items():
            length = shared_length(tokens, prefix)
            if length > reused:
                reused, source = length, (tokens, cache)
        cache = None
        if reused >= self.min_tokens:
            cache = copy.deepcopy(source[1])
            if reused < len(source[0]):
                cache.crop(reused - len(source[0]))   # transformers 5 crops by a negative count
        else:
            reused = 0
        if reused < len(prefix):
            device = next(self.model.parameters()).device
            new_tokens = torch.tensor([prefix[reused:]], device=device)
            cache = self.model(new_tokens, past_key_values=cache, use_cache=True).past_key_values
        self.entries[key] = cache
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return cache, reused


@dataclass
class CachedBatch:
    input_ids: torch.Tensor        # (B, L + S): [pad | cached prompt prefix] [pad | rest of the prompt]
    attention_mask: torch.Tensor
    past_key_values: DynamicCache  # keys/values of the first L positions of every row
    shared: list[int]              # per row: prompt tokens taken from the cache (all but the last)
    reused: list[int]              # per row: of those, tokens encoded before (by an earlier row or call)


def batch_inputs(prompts: list[list[int]], prefix_cache: PrefixCache, pad_id: int) -> CachedBatch | None:
    """Inputs for `generate` with every prompt but its last token in the cache; None when no prompt is longer
    than the cache's `min_tokens`."""
    batch = len(prompts)
    shared, reused = [0] * batch, [0] * batch
    encoded: dict[int, DynamicCache] = {}
    for row in sorted(range(batch), key=lambda i: prompts[i]):   # rows sharing a prefix come one after another
        length = len(prompts[row]) - 1
        if length >= prefix_cache.min_tokens:
            encoded[row], reused[row] = prefix_cache.encode(prompts[row][:length])
            shared[row] = length
    if not encoded:
        return None
    width = max(shared)
    some_cache = next(iter(encoded.values()))
    past = DynamicCache()
    for layer_index, layer in enumerate(some_cache.layers):
        keys = layer.keys.new_zeros((batch, layer.keys.shape[1], width, layer.keys.shape[-1]))
        values = layer.values.new_zeros((batch, layer.values.shape[1], width, layer.values.shape[-1]))
        for row, cache in encoded.items():
            keys[row, :, width - shared[row]:] = cache.layers[layer_index].keys[0]
            values[row, :, width - shared[row]:] = cache.layers[layer_index].values[0]
        past.update(keys, values, layer_index)

    rest_width = max(len(ids) - shared[row] for row, ids in enumerate(prompts))
    input_ids = torch.full((batch, width + rest_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        prefix, rest = ids[:shared[row]], ids[shared[row]:]
        if prefix:
            input_ids[row, width - len(prefix):width] = torch.tensor(prefix)
            attention_mask[row, width - len(prefix):width] = 1
        input_ids[row, input_ids.shape[1] - len(rest):] = torch.tensor(rest)
        attention_mask[row, input_ids.shape[1] - len(rest):] = 1
    return CachedBatch(input_ids, attention_mask, past, shared, reused)
