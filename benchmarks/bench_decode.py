"""Decoding throughput, measured side by side in one run: ours (dynamic cache, static cache, static cache
under torch.compile) against transformers.LlamaForCausalLM.generate (dynamic and static cache) of
identical shape, greedy, same prompt batch; BWArea (policy + world model per token) on the same paths.

Targets (issue 13): our best AR path >= 1.5x HF generate on a CPU and >= 1.0x HF's static cache on a GPU
(where HF compiles its static-cache forward itself). Every contender runs once before timing (that
call compiles; its time is reported as first_call_s), then the median of `--rounds` alternating rounds.

    python benchmarks/bench_decode.py --preset tiny --threads 2                 # CPU, fp32
    python benchmarks/bench_decode.py --device cuda --dtype bf16 --json        # one JSON line at the end
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Callable

import torch

from bench_model import hf_llama
from timing import timed_rounds
from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def processor_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode of our compiled path (default: generate's compile=True choice)")
    parser.add_argument("--skip-bwarea", action="store_true", help="time the AR model and HF only")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]

    config = BWAreaConfig.preset(args.preset)
    ar_config = ARConfig.matching(config)
    with device:  # built where they run: initialising a 1b model on the CPU first takes minutes
        ours = ARLanguageModel(ar_config).to(dtype).eval()
        theirs = hf_llama(ar_config).to(dtype).eval()
        bwarea = None if args.skip_bwarea else BWAreaModel(config).to(dtype).eval()
    prompt = torch.randint(2, config.vocab_size, (args.batch, args.prompt), device=device)
    new_tokens = args.batch * args.new_tokens
    compile_option = args.compile_mode or True

    def timed(run: Callable[[], object]) -> Callable[[], int]:
        def call() -> int:
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return new_tokens
        return call

    def our_generation(model: torch.nn.Module, **options) -> Callable[[], int]:
        return timed(lambda: model.generate(prompt, max_new_tokens=args.new_tokens, temperature=0.0,
                                            eos_token_id=[], **options))

    def hf_generation(**options) -> Callable[[], int]:
        def run() -> None:
            with torch.no_grad():
                theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=False, **options)
        return timed(run)

    contenders = {
        "ar_dynamic": our_generation(ours, static_cache=False),
        "ar_static": our_generation(ours, static_cache=True),
        "ar_compiled": our_generation(ours, compile=compile_option),
        "hf_dynamic": hf_generation(),
        "hf_static": hf_generation(cache_implementation="static"),
    }
    if bwarea is not None:
        contenders.update({
            "bwarea_dynamic": our_generation(bwarea, static_cache=False),
            "bwarea_static": our_generation(bwarea, static_cache=True),
            "bwarea_compiled": our_generation(bwarea, compile=compile_option),
        })
    first_call = {}
    for name, run in contenders.items():  # the first call compiles; timed_rounds warms up again
        start = time.perf_counter()
        run()
        first_call[name] = time.perf_counter() - start
    rates = timed_rounds(contenders, args.rounds)

    processor = processor_name(device)
    hf_best = max(rates["hf_dynamic"], rates["hf_static"])
    ar_best = max(rates[name] for name in ("ar_dynamic", "ar_static", "ar_compiled"))
    ratios = {f"{name}/hf_best": rates[name] / hf_best for name in ("ar_dynamic", "ar_static", "ar_compiled")}
    ratios["ar_best/hf_dynamic"] = ar_best / rates["hf_dynamic"]
    ratios["ar_best/hf_static"] = ar_best / rates["hf_static"]
    if bwarea is not None:
        ratios["bwarea_best/ar_best"] = max(rates[name] for name in rates if name.startswith("bwarea")) / ar_best

    print(f"decoding, preset {args.preset}, {processor}, {args.device} {dtype}, threads {args.threads}, "
          f"torch {torch.__version__}: batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens, "
          f"greedy; median of {args.rounds} rounds; compile mode {compile_option!r}")
    for name, rate in rates.items():
        print(f"  {name:>16}: {rate:9.0f} tok/s   (first call {first_call[name]:6.2f} s)")
    for name, ratio in ratios.items():
        print(f"  {name:>24} = {ratio:.2f}x")
    print("  targets: ar_best/hf_dynamic and ar_best/hf_static >= 1.5 on a CPU; ar_best/hf_static >= 1.0 on a GPU")
    if args.json:
        print(json.dumps({
            "benchmark": "decode", "preset": args.preset, "device": args.device, "processor": processor,
            "dtype": str(dtype).removeprefix("torch."), "threads": args.threads, "batch": args.batch,
            "prompt": args.prompt, "new_tokens": args.new_tokens, "rounds": args.rounds,
            "compile_mode": compile_option, "torch": torch.__version__,
            "tokens_per_second": {name: round(rate, 1) for name, rate in rates.items()},
            "first_call_seconds": {name: round(seconds, 3) for name, seconds in first_call.items()},
            "ratios": {name: round(ratio, 3) for name, ratio in ratios.items()},
        }))


if __name__ == "__main__":
    main()
