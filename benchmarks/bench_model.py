"""Model throughput, measured side by side in one run and printed as ratios.

1. Training tokens/s (forward + backward), fp32 and bf16-mixed:
   our AR baseline vs transformers.LlamaForCausalLM of identical shape (target >= 1.1x);
   BWArea stage 1 (world model + inverse dynamics) vs our AR of the world model's shape (target >= 0.6x).
2. Generation tokens/s (greedy, KV cache):
   our AR vs LlamaForCausalLM.generate of identical shape (target >= 1.5x at tiny size);
   BWArea (policy + world model per token) vs our AR (target >= 0.45x).

Measurements alternate between the contenders and report the median of several rounds.

    python benchmarks/bench_model.py [--preset tiny] [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from timing import timed_rounds
from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel


def hf_llama(config: ARConfig) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, attn_implementation="sdpa", pad_token_id=0, eos_token_id=1, bos_token_id=1,
    ))


def training_step(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module, tokens: int, bf16: bool) -> Callable[[], int]:
    def run() -> int:
        model.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_fn()
        loss.backward()
        return tokens
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--gen-prompt", type=int, default=32)
    parser.add_argument("--gen-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = BWAreaConfig.preset(args.preset)
    ar_config = ARConfig.matching(config)
    bwarea, ours, theirs = BWAreaModel(config), ARLanguageModel(ar_config), hf_llama(ar_config)
    print(f"preset={args.preset} threads={args.threads} torch={torch.__version__} "
          f"params: BWArea {bwarea.num_parameters() / 1e6:.2f}M, AR {ours.num_parameters() / 1e6:.2f}M, "
          f"HF Llama {theirs.num_parameters() / 1e6:.2f}M")

    batch = torch.randint(2, config.vocab_size, (args.batch, args.seq_len + 1))
    tokens = args.batch * args.seq_len
    print(f"\n== training, forward + backward, batch {args.batch} x {args.seq_len} tokens ==")
    for bf16 in (False, True):
        precision = "bf16-mixed" if bf16 else "fp32"
        rates = timed_rounds({
            "ours": training_step(lambda: ours.loss(batch), ours, tokens, bf16),
            "hf": training_step(lambda: theirs(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss, theirs, tokens, bf16),
            "bwarea": training_step(lambda: bwarea.stage1(batch).loss, bwarea, tokens, bf16),
        }, args.rounds)
        print(f"{precision:>10}: AR ours {rates['ours']:8.0f} tok/s | HF Llama {rates['hf']:8.0f} tok/s | "
              f"BWArea stage 1 {rates['bwarea']:8.0f} tok/s")
        print(f"{'':>10}  ours / HF = {rates['ours'] / rates['hf']:.2f}x (target >= 1.1)   "
              f"BWArea stage 1 / ours = {rates['bwarea'] / rates['ours']:.2f}x (target >= 0.6, FLOP limit ~0.67)")

    for model in (bwarea, ours, theirs):
        model.eval()
    prompt = torch.randint(2, config.vocab_size, (args.gen_batch, args.gen_prompt))
    new = args.gen_batch * args.gen_tokens

    def ours_generate() -> int:
        ours.generate(prompt, max_new_tokens=args.gen_tokens, temperature=0.0, eos_token_id=[])
        return new

    def hf_generate() -> int:
        with torch.no_grad():
            theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.gen_tokens,
                            min_new_tokens=args.gen_tokens, do_sample=False)
        return new

    def bwarea_generate() -> int:
        bwarea.generate(prompt, max_new_tokens=args.gen_tokens, temperature=1.0, eos_token_id=[],
                        generator=torch.Generator().manual_seed(0))
        return new

    print(f"\n== generation, batch {args.gen_batch}, prompt {args.gen_prompt}, {args.gen_tokens} new tokens (KV cache) ==")
    rates = timed_rounds({"ours": ours_generate, "hf": hf_generate, "bwarea": bwarea_generate}, args.rounds)
    print(f"AR ours {rates['ours']:8.0f} tok/s | HF Llama generate {rates['hf']:8.0f} tok/s | BWArea {rates['bwarea']:8.0f} tok/s")
    print(f"ours / HF = {rates['ours'] / rates['hf']:.2f}x (target >= 1.5)   "
          f"BWArea / ours = {rates['bwarea'] / rates['ours']:.2f}x (target >= 0.45)")


if __name__ == "__main__":
    main()
