"""`bwarea generate`: sample text from a saved BWArea or AR model and show the latent action per token.

    bwarea generate --model runs/tiny/export --prompt "You are in a kitchen." --max_new_tokens 40
    bwarea generate --model runs/tiny/export --prompt "> " --actions 7          # one fixed action
    bwarea generate --model runs/tiny/export --prompt "> " --sweep_actions 8    # actions 0..7 side by side
"""

from __future__ import annotations

import json
import sys

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

import bwarea
from bwarea import BWAreaModel


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bwarea generate", description=__doc__.split("\n\n")[0],
                            default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_argument("--model", type=str, required=True, help="Directory written by save_pretrained (model + tokenizer).")
    parser.add_argument("--prompt", type=str | list[str], default="",
                        help='A prompt, or a list of prompts generated as one left-padded batch (e.g. \'["a", "b"]\').')
    parser.add_argument("--max_new_tokens", type=int, default=40, help="Tokens to generate per prompt.")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="Sampling temperature of the choice: BWArea's cognitive action, or the AR model's token. 0 = greedy.")
    parser.add_argument("--token_temperature", type=float, default=0.0,
                        help="BWArea only: temperature of the world model's token given the action (0 = greedy).")
    parser.add_argument("--top_k", type=int | None, default=None, help="Keep only the k most likely choices.")
    parser.add_argument("--top_p", type=float | None, default=None, help="Nucleus sampling mass for the choice.")
    parser.add_argument("--actions", type=list[int] | None, default=None,
                        help="BWArea only: force the action(s): one value for every step, or one per generated token.")
    parser.add_argument("--sweep_actions", type=int, default=0,
                        help="BWArea only: generate once per fixed action 0..N-1 for the first prompt and print them side by side.")
    parser.add_argument("--stop", type=list[str], default=[], help="Stop strings (e.g. a newline).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator.")
    parser.add_argument("--show_actions", type=bool, default=True, help="Print each token with the action that produced it.")
    parser.add_argument("--json", type=bool, default=False, help="Print one JSON object per prompt instead of text.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = bwarea.load_pretrained(args.model).eval()
    tokenizer = bwarea.load_tokenizer(args.model)
    is_bwarea = isinstance(model, BWAreaModel)
    if not is_bwarea and (args.actions is not None or args.sweep_actions):
        print("bwarea generate: --actions and --sweep_actions need a BWArea model; this directory holds the AR baseline.", file=sys.stderr)
        return 2

    prompts = [args.prompt] if isinstance(args.prompt, str) else args.prompt
    forced: list[int] | None = args.actions[0] if args.actions and len(args.actions) == 1 else args.actions
    if args.sweep_actions:
        prompts = [prompts[0]] * args.sweep_actions
        forced = torch.arange(args.sweep_actions)[:, None].expand(-1, args.max_new_tokens)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    if batch["input_ids"].shape[1] == 0:
        batch = {"input_ids": torch.full((len(prompts), 1), tokenizer.eos_token_id),
                 "attention_mask": torch.ones(len(prompts), 1, dtype=torch.long)}
    output = model.generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, token_temperature=args.token_temperature, actions=forced,
        stop_strings=args.stop, tokenizer=tokenizer, generator=torch.Generator().manual_seed(args.seed),
    )
    for row, prompt in enumerate(prompts):
        ids = output.tokens[row][output.mask[row]].tolist()
        actions = output.actions[row][output.mask[row]].tolist()
        text = tokenizer.decode(ids)
        if args.json:
            record = {"prompt": prompt, "text": text, "tokens": ids, "log_probs": output.action_log_probs[row][output.mask[row]].tolist()}
            if is_bwarea:
                record["actions"] = actions
            print(json.dumps(record))
            continue
        label = f"[action {row}] " if args.sweep_actions else ""
        print(f"{label}{prompt}\u2502{text}")
        if args.show_actions and is_bwarea and not args.sweep_actions:
            print("  " + " ".join(f"{tokenizer.decode([t])!r}:{a}" for t, a in zip(ids, actions)))
    return 0
