"""Prompt prefix caching for transformers causal LMs: encode a shared prompt prefix once, reuse its KV cache.

A question DAG's prompts repeat themselves: every node of a step starts with the same system text,
context and recent observations of its environment, and consecutive steps share the system text and
context. On a CPU, where encoding a prompt is compute-bound, re-encoding those prefixes is most of
the cost. Here:

- the prompts of one batch are grouped by shared prefix (sorted; neighbours sharing at least
  `min_tokens` more than the whole batch does join one group: in a SPRING batch, one group per
  environment) and each group's prefix is encoded once;
- `PrefixCache` keeps the last few encoded prefixes (batch 1), so a later prompt that starts the
  same way only encodes what follows the longest kept prefix it shares;
- `batch_inputs` lays every row out as [padding | its group's prefix] [padding | the rest of its
  prompt], with the prefixes' keys and values in one batched cache. Positions come from the
  attention mask, so every row sees exactly its own unpadded prompt: outputs are those of plain
  left-padded generation (tested).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


def shared_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    length = min(len(ids) for ids in prompts) - 1
    for ids in prompts[1:]:
        length = min(length, shared_length(prompts[0], ids))
    return max(length, 0)


def prefix_groups(prompts: list[list[int]], min_tokens: int) -> list[tuple[list[int], int]]:
    """(row indices, shared prefix length) per group of prompts that share more than the whole batch."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    threshold = common_prefix_length(prompts) + min_tokens
    groups = [[order[0]]]
    for previous, row in zip(order, order[1:]):
        if shared_length(prompts[previous], prompts[row]) >= threshold:
            groups[-1].append(row)
        else:
            groups.append([row])
    return [(rows, common_prefix_length([prompts[i] for i in rows])) for rows in groups]


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
            length = shared_length(list(tokens), prefix)
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
    input_ids: torch.Tensor        # (B, L + S): [pad | group prefix] [pad | rest of the prompt]
    attention_mask: torch.Tensor
    past_key_values: DynamicCache  # keys/values of the first L positions of every row
    shared: list[int]              # per row: prefix tokens taken from the cache
    reused: list[int]              # per row: of those, tokens encoded by an earlier call


def batch_inputs(prompts: list[list[int]], prefix_cache: PrefixCache, pad_id: int) -> CachedBatch | None:
    """Inputs for `generate` with every group's prefix already in the cache; None when no prefix is long enough."""
    groups = [(rows, length) for rows, length in prefix_groups(prompts, prefix_cache.min_tokens)]
    encoded = {}
    for index, (rows, length) in enumerate(groups):
        if length >= prefix_cache.min_tokens:
            encoded[index] = prefix_cache.encode(prompts[rows[0]][:length])
    if not encoded:
        return None
    width = max(groups[index][1] for index in encoded)
    batch = len(prompts)
    shared, reused = [0] * batch, [0] * batch
    for index, (rows, length) in enumerate(groups):
        for row in rows:
            shared[row], reused[row] = (length, encoded[index][1]) if index in encoded else (0, 0)
    some_cache = next(iter(encoded.values()))[0]
    layers = []
    for layer_index, layer in enumerate(some_cache.layers):
        keys = layer.keys.new_zeros((batch, *layer.keys.shape[1:2], width, layer.keys.shape[-1]))
        values = layer.values.new_zeros((batch, *layer.values.shape[1:2], width, layer.values.shape[-1]))
        for index, (cache, _) in encoded.items():
            rows, length = groups[index]
            keys[rows, :, width - length:] = cache.layers[layer_index].keys[0]
            values[rows, :, width - length:] = cache.layers[layer_index].values[0]
        layers.append((keys, values))
    past = DynamicCache()
    for layer_index, (keys, values) in enumerate(layers):
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
