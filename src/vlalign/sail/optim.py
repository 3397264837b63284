"""Optimisers and the learning-rate schedule (pure functions of the step)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vlalign.errors import UserError


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): sign of an interpolated momentum, decoupled weight decay."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(param)
                exp_avg = state["exp_avg"]
                param.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(param.grad, alpha=1 - beta1).sign_()
                param.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(param.grad, alpha=1 - beta2)


def create_optimizer(name: str, params: list, lr: float, weight_decay: float,
                     betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Build 'lion' or 'adamw'; 1-D parameters (norms, biases, scale) get no weight decay."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if name == "lion":
        return Lion(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise UserError(f"unknown optimizer {name!r}; valid: lion, adamw")


def cosine_lr(step: int, total: int, base: float, warmup_fraction: float,
              min_fraction: float = 0.0) -> float:
    """Linear warm-up over ``warmup_fraction`` of ``total`` steps, then cosine decay."""
    warmup = int(round(warmup_fraction * total))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = base * min_fraction
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
