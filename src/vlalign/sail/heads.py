"""Alignment heads that map frozen-backbone features into the joint space (DESIGN 1.1, 1.2).

Every head maps (..., in_dim) to (..., out_dim), so it applies to pooled vectors (B x D) and,
unchanged, to every token (B x N x D) for dense use. L2 normalisation happens outside the head.
Each head keeps a JSON-ready ``config``; ``create_head(**head.config)`` rebuilds it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.errors import UserError


class LinearHead(nn.Module):
    """One affine layer; with ``norm``, LayerNorm first: the official alignment-probing head
    (SAIL part 1; the official ``AlignmentLayer`` puts a LayerNorm before every mapping).

    ``norm`` defaults to off so a heads.json written before the option existed (no ``norm`` key)
    rebuilds the plain layer it was trained as; ``config`` always records it.
    """

    def __init__(self, in_dim: int, out_dim: int, norm: bool = False) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"kind": "linear", "in_dim": in_dim, "out_dim": out_dim,
                                       "norm": bool(norm)}
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))  # (..., in_dim) -> (..., out_dim)


class _ClampedProduct(torch.autograd.Function):
    """clamp(gate, 0, 6) * value in one pass, saving only its inputs (not the clamped gate)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, value)
        return gate.clamp(0.0, 6.0).mul_(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, value = ctx.saved_tensors
        clamped = gate.clamp(0.0, 6.0)
        # ReLU6's derivative as a plain mask (1 where the clamp left the gate unchanged):
        # robust in bf16, where the official nn.ReLU6 crashed on some GPUs.
        grad_gate = (grad * value).mul_(clamped == gate)
        return grad_gate, clamped.mul_(grad)


class GLUHead(nn.Module):
    """SAIL's gated head (the official code's StarMLP): LayerNorm, W_out(ReLU6(W1 x) * W2 x).

    W1 and W2 run as one GEMM over their stacked weights, and the clamp-times-product is one
    autograd step that saves only the GEMM's output; parameters keep the names norm, w1, w2,
    w_out (the official f1, f2, g).
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, width_factor: int = 8) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "kind": "glu", "in_dim": in_dim, "out_dim": out_dim, "width_factor": width_factor,
        }
        hidden = width_factor * in_dim
        self.norm = nn.LayerNorm(in_dim)
        self.w1 = nn.Linear(in_dim, hidden)
        self.w2 = nn.Linear(in_dim, hidden)
        self.w_out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # (..., in_dim)
        weight = torch.cat([self.w1.weight, self.w2.weight])  # (2 hidden, in_dim)
        bias = torch.cat([self.w1.bias, self.w2.bias])
        gate, value = F.linear(x, weight, bias).chunk(2, dim=-1)  # (..., hidden) each
        return self.w_out(_ClampedProduct.apply(gate, value))  # (..., out_dim)


class MLPHead(nn.Module):
    """Two-layer MLP head (LayerNorm, Linear, GELU, Linear); hidden defaults to in_dim."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_dim
        self.config: dict[str, Any] = {
            "kind": "mlp", "in_dim": in_dim, "out_dim": out_dim, "hidden": hidden,
        }
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (..., in_dim) -> (..., out_dim)


class IdentityHead(nn.Module):
    """No mapping: for backbones already in a joint space (a CLIP's two towers)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim != out_dim:
            raise UserError(f"an identity head needs equal dims, got {in_dim} -> {out_dim}")
        self.config: dict[str, Any] = {"kind": "identity", "in_dim": in_dim, "out_dim": out_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def xavier_init_(head: nn.Module) -> nn.Module:
    """The official SAIL initialisation: Xavier-uniform weights and zero biases for every
    Linear, LayerNorm at (1, 0); in place, returns ``head``."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return head


INITS = ("torch", "xavier")  # torch: PyTorch's own Linear init; xavier: the official code's


HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead, "glu": GLUHead, "mlp": MLPHead, "identity": IdentityHead,
}


def create_head(kind: str, in_dim: int, out_dim: int, **kw: Any) -> nn.Module:
    """Build a head by kind name; unknown kinds or options are a UserError naming valid ones."""
    if kind not in HEADS:
        raise UserError(f"unknown head kind {kind!r}; valid: {', '.join(HEADS)}")
    cls = HEADS[kind]
    try:
        inspect.signature(cls).bind(in_dim, out_dim, **kw)
    except TypeError as err:
        options = ", ".join(list(inspect.signature(cls).parameters)[2:]) or "none"
        raise UserError(
            f"bad options {kw} for head {kind!r} ({err}); its options: {options}"
        ) from None
    return cls(in_dim, out_dim, **kw)
