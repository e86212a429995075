"""`bwarea generate`: sample text from a saved BWArea, CoLA or AR model and show the latent action per token.

    bwarea generate --model runs/tiny-policy/export --prompt "You are in a kitchen." --max_new_tokens 40
    bwarea generate --model runs/tiny-policy/export --prompt "> " --actions 7          # one fixed action
    bwarea generate --model runs/tiny-policy/export --prompt "> " --sweep_actions 8    # actions 0..7 side by side
    bwarea generate --model models/smollm2-bwarea --prompt "> " --prompt_actions policy
    bwarea generate --model models/smollm2-bwarea --prompt "> " --device cuda    # default: the GPU if there is one

--model is any save_pretrained directory: a trained run's export, or one written by `bwarea convert`.
"""

from __future__ import annotations

import json
import sys
from typing import Literal

from cli.options import command, new_parser, parse_options
from common.errors import InvalidInput

PROG = "bwarea generate"
# bwarea.generation.PromptActions, spelt out so that `--help` needs no torch (tests/training/test_generate_cli.py
# checks that the two agree)
PromptActions = Literal["inverse", "policy"]


def build_parser():
    parser = new_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--model", type=str, required=True,
                        help="Directory written by save_pretrained or `bwarea convert` (model + tokenizer).")
    parser.add_argument("--prompt", type=str | list[str], default="",
                        help='A prompt, or a list of prompts generated as one left-padded batch (e.g. \'["a", "b"]\').')
    parser.add_argument("--max_new_tokens", type=int, default=40, help="Tokens to generate per prompt.")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="Sampling temperature of the choice: the latent (cognitive) action, or the AR model's token. 0 = greedy.")
    parser.add_argument("--token_temperature", type=float, default=0.0,
                        help="Latent-action models only: temperature of the world model's token given the action (0 = greedy).")
    parser.add_argument("--top_k", type=int | None, default=None, help="Keep only the k most likely choices.")
    parser.add_argument("--top_p", type=float | None, default=None, help="Nucleus sampling mass for the choice.")
    parser.add_argument("--actions", type=list[int] | None, default=None,
                        help="Latent-action models only: force the action(s): one value for every step, or one per generated token.")
    parser.add_argument("--sweep_actions", type=int, default=0,
                        help="Latent-action models only: generate once per fixed action 0..N-1 for the first prompt and "
                             "print them side by side.")
    parser.add_argument("--prompt_actions", type=PromptActions, default="inverse",
                        help="Latent-action models only: how the prompt's own positions are labelled for the world model: "
                             "inverse = by the inverse dynamics (the prompt read as the text it is), policy = by the "
                             "policy's choices, drawn like the generated actions. CoLA's world model reads no past "
                             "actions, so there both give the same text.")
    parser.add_argument("--stop", type=list[str], default=[], help="Stop strings (e.g. a newline).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator.")
    parser.add_argument("--show_actions", type=bool, default=True, help="Print each token with the action that produced it.")
    parser.add_argument("--json", type=bool, default=False, help="Print one JSON object per prompt instead of text.")
    parser.add_argument("--device", type=str, default="auto",
                        help="Where the model runs: auto (the GPU if there is one, else the CPU), cpu, cuda, cuda:1, ...")
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    import torch

    import bwarea
    from bwarea.device import inference_dtype, resolve_device

    device = resolve_device(args.device)
    model = bwarea.load_pretrained(args.model, map_location=device).eval()
    tokenizer = bwarea.load_tokenizer(args.model)
    if not callable(getattr(model, "generate", None)):
        raise InvalidInput(f"{args.model} holds a {type(model).__name__}, which does not generate text; "
                           "give a BWArea, CoLA or AR baseline model.")
    has_actions = bwarea.has_latent_actions(model)
    if not has_actions and (args.actions is not None or args.sweep_actions or args.prompt_actions != "inverse"):
        raise InvalidInput("--actions, --sweep_actions and --prompt_actions policy need a latent-action model "
                           "(BWArea or CoLA); this directory holds the AR baseline.")
    if has_actions and args.sweep_actions > model.config.num_actions:
        raise InvalidInput(f"--sweep_actions {args.sweep_actions} exceeds the model's {model.config.num_actions} "
                           f"latent actions; give at most {model.config.num_actions}.")

    prompts = [args.prompt] if isinstance(args.prompt, str) else args.prompt
    forced: list[int] | None = args.actions[0] if args.actions and len(args.actions) == 1 else args.actions
    if args.sweep_actions:
        prompts = [prompts[0]] * args.sweep_actions
        forced = torch.arange(args.sweep_actions, device=device)[:, None].expand(-1, args.max_new_tokens)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    if batch["input_ids"].shape[1] == 0:
        batch = {"input_ids": torch.full((len(prompts), 1), tokenizer.eos_token_id),
                 "attention_mask": torch.ones(len(prompts), 1, dtype=torch.long)}
    dtype = inference_dtype(device)
    try:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model.generate(
                batch["input_ids"].to(device), batch["attention_mask"].to(device), max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, token_temperature=args.token_temperature,
                actions=forced, prompt_actions=args.prompt_actions, stop_strings=args.stop, tokenizer=tokenizer,
                generator=torch.Generator(device).manual_seed(args.seed),
            )
    except ValueError as error:  # e.g. a forced action outside the model's range
        raise InvalidInput(str(error))
    print(f"bwarea generate: {args.model} on {device} ({'bfloat16 autocast' if dtype else 'float32'}); torch threads: "
          f"{torch.get_num_threads()}", file=sys.stderr)
    for row, prompt in enumerate(prompts):
        ids = output.tokens[row][output.mask[row]].tolist()
        actions = output.actions[row][output.mask[row]].tolist()
        text = tokenizer.decode(ids)
        if args.json:
            record = {"prompt": prompt, "text": text, "tokens": ids, "log_probs": output.action_log_probs[row][output.mask[row]].tolist()}
            if has_actions:
                record["actions"] = actions
            print(json.dumps(record))
            continue
        label = f"[action {row}] " if args.sweep_actions else ""
        print(f"{label}{prompt}\u2502{text}")
        if args.show_actions and has_actions and not args.sweep_actions:
            print("  " + " ".join(f"{tokenizer.decode([t])!r}:{a}" for t, a in zip(ids, actions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
