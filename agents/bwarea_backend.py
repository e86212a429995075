"""This project's own models (BWArea, CoLA, AR baseline) as a text-completion backend.

    backend = BWAreaBackend(BWAreaBackendConfig(model="runs/tiny/export"))   # a save_pretrained directory

Any save_pretrained directory works, a trained run's export or one written by `bwarea convert`.
The request's `temperature` is the temperature of the model's choice: the cognitive action for
BWArea and CoLA (the BWArea release used 2.0), the next token for the AR baseline; `token_temperature`
(latent-action models only) is how the world model picks the token given the action (0 = greedy).
Stop strings end a row; the returned text stops before them. For a latent-action model every
completion's metadata holds, per generated token and aligned: `token_ids`, `tokens` (each decoded
alone, for display), the latent action behind it (`actions`) and that action's log-probability under
the policy (`action_log_probs`); a trace gives them as `NodeTrace.token_actions()`. Beside them, the
policy's `TOP_ACTIONS` most likely actions at that token (`action_top`, most likely first) and their
probabilities at temperature 1 (`action_top_probs`, rounded to 4 digits), what a viewer shows on hover.

`choose(requests, options)` (answer_format: choice) scores each option as the model's reply, log p(option | prompt)
summed over its tokens. For the AR baseline that is its next-token likelihood. For a latent-action model it is the
likelihood of the simulated LLM, scored as generation produces text: at each option token the action is
marginalised under the policy, p(y_j | x, y_<j) = sum_a pi(a | x, y_<j) p_world(y_j | x, y_<j, a), with the earlier
positions' actions labelled by the inverse dynamics (the two-stream scoring of stage-2 validation); this takes one
world-model pass per action (K of them) over the request's options.

Chat requests: our tokenizers have no chat template, so messages are rendered as plain text
("System: ...", "User: ...", then "Assistant:"); a model trained on game transcripts is usually
better served by raw prompts (see `agents.direct_agent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch

import bwarea
from agents.local_backend import GeneratedRow, LocalBackend
from bwarea.device import resolve_device
from bwarea.generation import PromptActions
from common.errors import InvalidInput

TOP_ACTIONS = 5   # alternatives recorded per generated token of a latent-action model


@dataclass
class BWAreaBackendConfig:
    """model: directory written by save_pretrained or `bwarea convert` (model + tokenizer).
    token_temperature: latent-action models only, world-model token temperature given the action (0 = greedy).
    prompt_actions: latent-action models only, how the prompt's own positions are labelled for the world
    model: "inverse" (by the inverse dynamics: the prompt read as the text it is) or "policy" (by the
    policy's choices, drawn like the generated actions); CoLA's world model reads no past actions, so
    there both give the same text. top_k / top_p: truncation of the choice's distribution.
    max_context: prompt + generated tokens (default: the model's max_position_embeddings). seed: seeds sampling.
    device: where the model runs: "auto" (the GPU if there is one, else the CPU), "cpu", "cuda", "cuda:1", ..."""

    model: str
    token_temperature: float = 0.0
    prompt_actions: PromptActions = "inverse"
    top_k: int | None = None
    top_p: float | None = None
    device: str = "auto"
    max_context: int | None = None
    max_batch_size: int = 16
    chat_template: bool = True
    seed: int = 0


class BWAreaBackend(LocalBackend):
    def __init__(self, config: BWAreaBackendConfig) -> None:
        if config.prompt_actions not in get_args(PromptActions):
            raise InvalidInput(f"prompt_actions must be one of {get_args(PromptActions)}, got {config.prompt_actions!r}.")
        self.device = resolve_device(config.device)
        model = bwarea.load_pretrained(config.model, map_location=self.device)
        if not callable(getattr(model, "generate", None)):
            raise InvalidInput(f"{config.model} holds a {type(model).__name__}, which does not generate text; "
                               "give a BWArea, CoLA or AR baseline checkpoint.")
        tokenizer = bwarea.load_tokenizer(config.model)
        super().__init__(tokenizer, config.max_context or model.config.max_position_embeddings, config.max_batch_size,
                         config.chat_template, config.seed)
        self.model = model.eval()
        self.config = config
        self.name = f"bwarea:{config.model}"
        self.has_actions = bwarea.has_latent_actions(model)

    def _generate(self, prompts: list[list[int]], budgets: list[int], temperature: float,
                  stop: tuple[str, ...]) -> list[GeneratedRow]:
        device = self.device
        input_ids, attention_mask = self.left_pad(prompts)
        output = self.model.generate(
            input_ids.to(device), attention_mask.to(device), max_new_tokens=max(budgets), temperature=temperature,
            top_k=self.config.top_k, top_p=self.config.top_p, token_temperature=self.config.token_temperature,
            prompt_actions=self.config.prompt_actions, stop_strings=stop, tokenizer=self.tokenizer,
            pad_token_id=self.pad_id, generator=torch.Generator(device).manual_seed(self.seed + self._calls),
            report_top=TOP_ACTIONS if self.has_actions else 0)
        rows = []
        for row in range(output.tokens.shape[0]):
            keep = output.mask[row]
            metadata = {}
            token_ids = output.tokens[row][keep].tolist()
            if self.has_actions:
                metadata = {"token_ids": token_ids, "tokens": [self.tokenizer.decode([t]) for t in token_ids],
                            "actions": output.actions[row][keep].tolist(),
                            "action_log_probs": [round(x, 5) for x in output.action_log_probs[row][keep].tolist()],
                            "action_top": output.top_choices[row][keep].tolist(),
                            "action_top_probs": [[round(p, 4) for p in probs]
                                                 for probs in output.top_choice_probs[row][keep].tolist()]}
            rows.append(GeneratedRow(token_ids, bool(output.finished[row]), metadata))
        return rows

    @torch.no_grad()
    def _option_log_likelihoods(self, prompt: list[int], option_ids: list[list[int]]) -> list[float]:
        rows = [prompt + ids for ids in option_ids]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):   # right-padded: the prompt at the same positions in every row
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        targets = input_ids[:, 1:].unsqueeze(-1)
        if not self.has_actions:
            log_probs = self.model.policy_logits(input_ids, mask)[:, :-1].float().log_softmax(-1).gather(-1, targets).squeeze(-1)
        else:
            policy = self.model.policy_logits(input_ids, mask)[:, :-1].float().log_softmax(-1)      # (B, T-1, K)
            world = torch.stack([
                self.model.two_stream_logits(input_ids, torch.full((width,), action, device=self.device), mask)[:, :-1]
                .float().log_softmax(-1).gather(-1, targets).squeeze(-1)
                for action in range(policy.shape[-1])], dim=-1)                                          # (B, T-1, K)
            log_probs = (policy + world).logsumexp(-1)
        start = len(prompt) - 1   # position t predicts token t + 1: the option's tokens are predicted from here on
        return [float(log_probs[row, start:start + len(ids)].sum()) for row, ids in enumerate(option_ids)]
