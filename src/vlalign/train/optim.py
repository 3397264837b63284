"""Optimisers and the learning-rate schedule (pure functions of the step), shared by every
task the engine trains."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from vlalign.errors import UserError


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): sign of an interpolated momentum, decoupled weight decay."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        """One update of every parameter with a gradient (foreach kernels: few passes)."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            moments = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            updates = torch._foreach_mul(moments, beta1)
            torch._foreach_add_(updates, grads, alpha=1 - beta1)
            torch._foreach_sign_(updates)
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            torch._foreach_mul_(moments, beta2)
            torch._foreach_add_(moments, grads, alpha=1 - beta2)


OPTIMIZERS = ("lion", "adamw")


LR_SCALE = "lr_scale"  # a parameter attribute and a param group key (timm's and EVA-02's name)


def set_lr_scale(param: nn.Parameter, scale: float) -> None:
    """Train ``param`` at ``scale`` times the scheduled learning rate (layer-wise lr decay):
    ``create_optimizer`` groups parameters by it; unmarked parameters have scale 1."""
    setattr(param, LR_SCALE, float(scale))


def create_optimizer(name: str, named_params: Iterable[tuple[str, nn.Parameter]], lr: float,
                     weight_decay: float, betas: tuple[float, float], eps: float = 1e-8,
                     no_weight_decay: Iterable[str] = ()) -> torch.optim.Optimizer:
    """'lion' or 'adamw' over the trainable ``(name, parameter)`` pairs. No weight decay on 1-D
    parameters (norms, biases, the loss's scale and bias) nor on the names in
    ``no_weight_decay`` (CLS/mask tokens, position embeddings: a module's ``no_weight_decay()``).
    ``eps`` is AdamW's (EVA-02 uses 1e-6). Parameters marked with ``set_lr_scale`` go into
    groups of their scale (the engine sets each group's lr to the schedule's times its
    ``lr_scale``); without marks the groups are the two (decay, no decay) of scale 1."""
    skip = set(no_weight_decay)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for param_name, param in named_params:
        if param.requires_grad:
            decays = not (param.ndim < 2 or param_name in skip)
            groups.setdefault((getattr(param, LR_SCALE, 1.0), decays), []).append(param)
    param_groups = [{"params": params, "weight_decay": weight_decay if decays else 0.0,
                     "lr": lr * scale, LR_SCALE: scale}
                    for (scale, decays), params in groups.items()]
    if name == "lion":
        return Lion(param_groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps)
    raise UserError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def cosine_lr(step: int, total: int, base: float, warmup_fraction: float,
              min_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup_fraction`` of ``total`` steps, then cosine decay."""
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = base * min_fraction
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
