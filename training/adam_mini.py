"""Adam-mini: Adam with one second-moment scalar per parameter block (Zhang et al., 2024).

Adam keeps two fp32 numbers per weight: the first moment m and the second moment v. Adam-mini keeps m per
weight but shares v within each block B of weights whose Hessian block is dense (an attention head, a neuron):

    m   <- beta1 m + (1 - beta1) g                              (per weight)
    v_B <- beta2 v_B + (1 - beta2) mean_{i in B} g_i^2          (one scalar per block)
    w   <- w (1 - lr lambda) - lr m_hat / (sqrt(v_B_hat) + eps)  for every weight w of block B

with Adam's bias corrections m_hat = m / (1 - beta1^t), v_B_hat = v_B / (1 - beta2^t) and AdamW's decoupled
weight decay lambda. With one element per block this is exactly AdamW; with the partition below the optimizer
state is about half of AdamW's.

Block layouts. A parameter's layout says how its flattened (row-major) elements split into blocks, as runs of
(count, size): `count` consecutive blocks of `size` elements each, in order. Examples for a weight (rows, cols):
one block per output row is ((rows, cols),); the whole tensor is ((1, rows * cols),); the fused q/k/v weight of
`bwarea.transformer.Attention` (rows [Q heads | K heads | V rows], see below) is
((num_heads + num_kv_heads, head_dim * cols), (num_kv_heads * head_dim, cols)).
Each parameter group carries a "block_layouts" list parallel to its "params"; `adam_mini_param_groups(model)`
builds the groups for a model:

    Q and K of each attention layer   one block per head
    V                                 one block per output row
    every other weight with >= 2 dims one block per output row (attention output, MLP, embedding, LM head, policy
                                      and action heads, codebook rows, LoRA A and B, ...)
    1-dim parameters (norm gains, biases outside q/k/v), scalars   one block per tensor

State per parameter (the state_dict layout; always fp32, whatever the parameter's dtype):
    "step"              int, optimizer steps taken
    "exp_avg"           (param.shape) first moment m
    "block_exp_avg_sq"  (num_blocks,) second moment v, one entry per block in layout order

    groups = adam_mini_param_groups(model, trainable, weight_decay=0.1)
    optimizer = AdamMini(groups, lr=1e-3, betas=(0.9, 0.95))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from bwarea.transformer import Attention

BlockLayout = tuple[tuple[int, int], ...]  # runs of (count, size), in the parameter's flattened order


def row_blocks(shape: torch.Size | tuple[int, ...]) -> BlockLayout:
    """One block per output row (the first dimension) of a tensor with at least 2 dims; one block for 0/1-dim tensors."""
    numel = math.prod(shape)
    if len(shape) < 2:
        return ((1, numel),)
    return ((shape[0], numel // shape[0]),)


def element_blocks(shape: torch.Size | tuple[int, ...]) -> BlockLayout:
    """One block per element: Adam-mini then computes exactly AdamW."""
    return ((math.prod(shape), 1),)


def attention_qkv_blocks(attention: Attention, shape: torch.Size | tuple[int, ...]) -> BlockLayout:
    """Layout of the fused q/k/v weight (or bias) of `attention`: one block per Q head and per K head, one per V row.

    The weight's rows are [num_heads * head_dim query rows | num_kv_heads * head_dim key rows | as many value
    rows] (bwarea.transformer.Attention splits its output that way); a bias is the same with one column.
    """
    rows = (attention.num_heads + 2 * attention.num_kv_heads) * attention.head_dim
    if shape[0] != rows:
        raise ValueError(f"the q/k/v parameter of shape {tuple(shape)} does not have the {rows} rows that "
                         f"{attention.num_heads} query heads and 2 x {attention.num_kv_heads} key/value heads of "
                         f"size {attention.head_dim} need; build the attention layer and its qkv weight together.")
    row_size = math.prod(shape[1:])
    return ((attention.num_heads + attention.num_kv_heads, attention.head_dim * row_size),
            (attention.num_kv_heads * attention.head_dim, row_size))


def num_blocks(layout: BlockLayout) -> int:
    return sum(count for count, _ in layout)


def _block_views(flat: torch.Tensor, layout: BlockLayout) -> Iterator[torch.Tensor]:
    """The (count, size) views of a flat tensor, one per run of the layout."""
    start = 0
    for count, size in layout:
        yield flat[start:start + count * size].view(count, size)
        start += count * size


def _checked_layout(param: torch.Tensor, layout: Any) -> BlockLayout:
    """`layout` as a tuple of (count, size) int pairs covering exactly `param`'s elements, else ValueError."""
    try:
        runs = tuple((int(count), int(size)) for count, size in layout)
    except (TypeError, ValueError):
        raise ValueError(f"block layout {layout!r} is not a sequence of (count, size) pairs; e.g. one block per row "
                         "of a (3, 4) weight is ((3, 4),).") from None
    if not runs or any(count < 1 or size < 1 for count, size in runs):
        raise ValueError(f"block layout {layout!r} needs at least one (count, size) run, each count and size at least 1.")
    covered = sum(count * size for count, size in runs)
    if covered != param.numel():
        raise ValueError(f"block layout {runs} covers {covered} elements but its parameter of shape {tuple(param.shape)} "
                         f"has {param.numel()}; give a layout whose counts x sizes sum to the parameter's size.")
    return runs


class AdamMini(torch.optim.Optimizer):
    """Adam-mini (module docstring): AdamW with the second moment shared within blocks of each parameter.

    Args:
        params: Parameter groups (dicts) whose "block_layouts" list holds one layout per parameter of "params";
            build them with `adam_mini_param_groups`. Groups may override lr, betas, eps and weight_decay.
        lr: Learning rate.
        betas: Decay rates of the first moment and of the block second moments.
        eps: Added to sqrt(v_hat) in the denominator.
        weight_decay: Decoupled (AdamW) weight decay.

    Parameters may live on any device and be fp32 or bf16; the state is fp32 on the parameter's device and a
    bf16 parameter is updated in fp32, then rounded once.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"AdamMini {name} must be non-negative, got {value}.")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"AdamMini betas must both lie in [0, 1), got {betas}.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict) or "block_layouts" not in param_group:
            raise ValueError("AdamMini needs each parameter's blocks: pass parameter groups built by "
                             "adam_mini_param_groups(model), or dicts with 'params' and a parallel 'block_layouts' list.")
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        layouts = list(param_group["block_layouts"])
        if len(layouts) != len(params):
            raise ValueError(f"a parameter group has {len(params)} params but {len(layouts)} block_layouts; give one "
                             "layout per parameter, in the same order.")
        known = {id(p): layout for group in self.param_groups for p, layout in zip(group["params"], group["block_layouts"])}
        checked = []
        for param, layout in zip(params, layouts):
            layout = _checked_layout(param, layout)
            if id(param) in known:
                how = "two different block layouts" if known[id(param)] != layout else "twice"
                raise ValueError(f"the parameter of shape {tuple(param.shape)} is given {how}; pass each parameter once, "
                                 "with one layout.")
            known[id(param)] = layout
            checked.append(layout)
        super().add_param_group({**param_group, "params": params, "block_layouts": tuple(checked)})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param, layout in zip(group["params"], group["block_layouts"]):
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("AdamMini does not support sparse gradients; build embeddings with sparse=False.")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
                    state["block_exp_avg_sq"] = torch.zeros(num_blocks(layout), dtype=torch.float32, device=param.device)
                state["step"] += 1
                self._update(param, layout, state, group)
        return loss

    @staticmethod
    def _update(param: torch.Tensor, layout: BlockLayout, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps, step = float(group["lr"]), group["betas"], group["eps"], state["step"]
        grad = param.grad.reshape(-1)
        exp_avg, block_sq = state["exp_avg"].view(-1), state["block_exp_avg_sq"]
        exp_avg.lerp_(grad.float(), 1 - beta1)
        # mean of g^2 per block; vector_norm reads the gradient once, without a full-size temporary of squares
        grad_sq = torch.cat([torch.linalg.vector_norm(blocks, dim=-1, dtype=torch.float32).square_().div_(blocks.shape[1])
                             for blocks in _block_views(grad, layout)])
        block_sq.mul_(beta2).add_(grad_sq, alpha=1 - beta2)
        denominator = (block_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
        in_place = param.dtype == torch.float32 and param.is_contiguous()
        weights = param if in_place else param.to(torch.float32, memory_format=torch.contiguous_format)
        flat = weights.view(-1)
        flat.mul_(1 - lr * group["weight_decay"])
        step_size = lr / (1 - beta1 ** step)
        for weight_blocks, moment_blocks, block_denominator in zip(
                _block_views(flat, layout), _block_views(exp_avg, layout), denominator.split([count for count, _ in layout])):
            weight_blocks.addcdiv_(moment_blocks, block_denominator[:, None], value=-step_size)
        if not in_place:
            param.copy_(weights)

    def __repr__(self) -> str:
        # torch's repr would print every layout: thousands of lines for a 1B model
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.param_groups):
            settings = {key: value for key, value in group.items() if key not in ("params", "block_layouts")}
            lines += [f"Parameter Group {index}", *(f"    {key}: {settings[key]}" for key in sorted(settings)),
                      f"    blocks: {sum(map(num_blocks, group['block_layouts']))} over {len(group['params'])} parameters"]
        return "\n".join([*lines, ")"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by `state_dict()` of an AdamMini over the same parameters and block layouts.

        The moments stay fp32 (torch's loader would cast them to each parameter's dtype) and are copied, so the
        optimizer never updates tensors of the caller's state_dict in place.
        """
        saved_groups = state_dict["param_groups"]
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            saved_layouts = tuple(tuple(tuple(run) for run in layout) for layout in saved.get("block_layouts", ()))
            if saved_layouts != group["block_layouts"]:
                raise ValueError(f"optimizer state: parameter group {index} was saved with other block layouts than this "
                                 "AdamMini's; build the optimizer with the same partition (adam_mini_param_groups on "
                                 "the same model and parameters) to resume.")
        super().load_state_dict(state_dict)
        saved_ids = [param_id for group in saved_groups for param_id in group["params"]]
        params = [param for group in self.param_groups for param in group["params"]]
        for param_id, param in zip(saved_ids, params):
            for key, value in state_dict["state"].get(param_id, {}).items():
                if isinstance(value, torch.Tensor):
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32, copy=True)


def adam_mini_param_groups(model: nn.Module, parameters: Iterable[nn.Parameter] | None = None,
                           weight_decay: float = 0.0, **group_options: Any) -> list[dict[str, Any]]:
    """Parameter groups for `AdamMini` over `parameters` of `model` (default: its parameters that require grad).

    Each parameter gets its blocks from the module that holds it (module docstring: heads for Q/K, rows for V and
    every other weight matrix, one block per 1-dim tensor). Weight decay goes to the weights of nn.Linear and
    nn.Embedding layers only, as training.pretrain does for AdamW; `group_options` (e.g. lr) go into both groups.
    A parameter shared by several modules (tied embedding and LM head) is optimised once. Returns the non-empty
    groups: decayed first, then the rest, each in the model's parameter order.

    ValueError for a parameter that is not `model`'s, or one whose holders ask for different blocks (e.g. a q/k/v
    weight tied to another layer's weight).
    """
    reserved = sorted({"params", "block_layouts", "weight_decay"} & set(group_options))
    if reserved:
        raise ValueError(f"adam_mini_param_groups sets {reserved[0]!r} itself; pass weight_decay as its own argument "
                         "and only optimizer settings such as lr or betas as group options.")
    qkv_layers = {}  # id(nn.Linear) -> the Attention whose fused q/k/v projection it is
    for module in model.modules():
        if isinstance(module, Attention):
            # a LoRA-wrapped projection keeps its own weights on the wrapped base layer
            qkv = module.qkv.get_base_layer() if hasattr(module.qkv, "get_base_layer") else module.qkv
            qkv_layers[id(qkv)] = module
    layouts: dict[int, BlockLayout] = {}
    decayed: set[int] = set()
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            holder = qkv_layers.get(id(module))
            layout = attention_qkv_blocks(holder, param.shape) if holder is not None else row_blocks(param.shape)
            if layouts.setdefault(id(param), layout) != layout:
                raise ValueError(f"parameter {f'{name}.{param_name}'.lstrip('.')} of shape {tuple(param.shape)} is shared with a layer "
                                 f"that asks for other Adam-mini blocks ({layouts[id(param)]} vs {layout}); untie it "
                                 "or give AdamMini its groups by hand.")
            if param_name == "weight" and isinstance(module, (nn.Linear, nn.Embedding)):
                decayed.add(id(param))
    order = {id(param): index for index, param in enumerate(model.parameters())}
    if parameters is None:
        chosen = [param for param in model.parameters() if param.requires_grad]
    else:
        chosen = list({id(param): param for param in parameters}.values())
        unknown = [param for param in chosen if id(param) not in order]
        if unknown:
            raise ValueError(f"a parameter of shape {tuple(unknown[0].shape)} in `parameters` is not a parameter of the "
                             f"{type(model).__name__}; pass parameters of the model the groups are built for.")
        chosen.sort(key=lambda param: order[id(param)])
    groups = [{"params": [p for p in chosen if id(p) in decayed], "weight_decay": weight_decay},
              {"params": [p for p in chosen if id(p) not in decayed], "weight_decay": 0.0}]
    return [{**group, "block_layouts": [layouts[id(p)] for p in group["params"]], **group_options}
            for group in groups if group["params"]]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors of an optimizer's state (moments, step counters), any optimizer."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))
