"""The optimizer over a model's parameter groups, and the learning-rate schedule."""

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from gpt.models.interface import TokenModel


def build_optimizer(model: TokenModel, make_optimizer: Callable[..., torch.optim.Optimizer],
                    fused: bool = False) -> torch.optim.Optimizer:
    """``make_optimizer`` (AdamW with the configured lr, from ``conf/optim``) over the parameter groups of ``model``
    (or of an objective, whose ``param_groups`` add its own parameters to its model's), each group's lr scaled by
    its ``lr_scale`` (μP). ``fused``: one kernel for the update of every parameter."""
    optimizer = make_optimizer(model.param_groups(), **({"fused": True} if fused else {}))
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    return optimizer


def warmup_steps_for(warmup_steps: int, max_steps: int) -> int:
    """The warmup of a run of ``max_steps``: ``warmup_steps``, but at most a tenth of the run, so that a short run
    is not all warmup."""
    return min(warmup_steps, max_steps // 10)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr: float) -> LambdaLR:
    """Linear warmup to the optimizer's lr (for at most a tenth of the run), then cosine decay to ``min_lr`` at
    ``max_steps``; parameter groups with a scaled lr (μP) follow the same curve, scaled."""
    base_lr = optimizer.defaults["lr"]
    warmup = warmup_steps_for(warmup_steps, max_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        lr = min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - min_lr)
        return lr / base_lr

    return LambdaLR(optimizer, lr_factor)
