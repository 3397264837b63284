"""The gather that lets contrastive losses see the global batch's negatives across ranks.

Gradient convention (what a trainer must do; DESIGN 4: multi-process = one process):

- Every rank holds an equal share ``b`` of the global batch ``B = world_size * b``. A loss
  (``vlalign.sail.losses``) gathers the other ranks' embeddings with ``all_gather_with_grad``
  and returns this rank's *share*: its local rows against all ``B`` columns, normalised by the
  global batch. The sum of the shares over ranks is the single-process loss on the global batch.
- Call ``backward()`` on the share as is. The gather's backward sums over ranks the gradient
  each rank's share sends to a row, so every local embedding receives the gradient of the
  global loss, and every parameter (heads, logit scale, bias) receives the part of the global
  gradient that flows through this rank's rows.
- Then **sum** parameter gradients over ranks. The training engine does it with DDP, which
  averages: it backpropagates ``world_size * share``, with the loss module's scale and bias
  inside the DDP-wrapped module (``vlalign.train.task``). Every rank ends with the
  single-process gradient and takes the same optimiser step.
- For logging, the sum of the shares over ranks is the global loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vlalign.utils.distributed import world_info

__all__ = ["all_gather_with_grad", "world_info"]


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all_reduces (SUM) the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)  # (world_size * b, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()  # (world_size * b, ...), reduced in place below
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rank, world_size = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        local = grad.shape[0] // world_size
        return grad[rank * local:(rank + 1) * local], None  # (b, ...)


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate x (b x ...) from all ranks in rank order, keeping the autograd graph.

    Every rank must pass the same shape. Backward sums over ranks the gradient that each rank's
    loss sends to these rows, so local rows get the gradient of the sum of all ranks' losses.
    Without an initialised process group (or with one rank) it returns x unchanged.
    """
    if world_info(group)[1] == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)
