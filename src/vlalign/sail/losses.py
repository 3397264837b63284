"""Contrastive losses for SAIL: sigmoid (SAIL, SigLIP) and InfoNCE; blocked, exact, distributed.

Contract shared by ``SigmoidLoss`` and ``InfoNCELoss``:

- ``loss(image, text) -> (total, terms)``: ``image`` is b x d L2-normalised image embeddings;
  ``text`` is one b x d tensor of L2-normalised text embeddings, or several for several
  positives per image (e.g. raw and rewritten captions): a sequence, or a mapping name -> tensor.
  One loss is computed per text tensor and the losses are averaged (SAIL's multi-positive scheme,
  DESIGN 1.2). ``total`` is the scalar to backpropagate; ``terms`` holds each text tensor's loss,
  detached, for logging: ``{}`` for one tensor, ``{"loss/0": ..., "loss/1": ...}`` for a
  sequence, ``{"loss/raw": ..., "loss/rewritten": ...}`` for a mapping.
- Distributed (``world_size > 1``): each of the ``world_size`` ranks holds b rows of a global
  batch of B = world_size * b (equal b on all ranks). Texts (and, for InfoNCE's text->image
  term, images) are gathered with gradient, so each local row sees all B - 1 negatives of the
  global batch; local row i of rank r is positive with global column r * b + i. Each rank returns
  its *share* (local rows, normalised by the global B); the shares sum to the single-process
  loss. Gradients: see ``vlalign.sail.distributed`` (sum parameter gradients over ranks).
- ``block_size``: logits are formed ``block_size`` columns at a time in forward and recomputed in
  backward by a custom autograd Function, so memory is O(b x block_size), never b x B, and the
  gradients are exact. Positives are found as a diagonal of each block: no label matrix.
  ``block_size=None`` is the same computation in one block.
- Precision: under bf16 autocast the block matmuls take bf16 operands and accumulate in
  float32 (on CUDA straight into float32 results, on the CPU rounded to bf16 per block, then
  widened); everything elementwise (softplus, sigmoid, sums, the scale and bias) stays float32.
  Outside autocast, and under fp16 autocast, the blocks are float32: in fp16 the negatives'
  gradients (sigmoid(-10) = 4.5e-5) would be subnormal or flushed to zero.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlalign.errors import UserError
from vlalign.sail.distributed import all_gather_with_grad

TextInput = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def _blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    """[start, stop) column ranges of at most ``block`` columns covering range(n)."""
    for start in range(0, n, block):
        yield start, min(start + block, n)


def _float32(x: torch.Tensor) -> torch.autocast:
    """Context that turns autocast off on x's device: the blocks choose their own dtype."""
    return torch.autocast(x.device.type, enabled=False)


def block_dtype(device: torch.device) -> torch.dtype:
    """The matmul operand dtype of the loss blocks: bf16 under bf16 autocast, else float32."""
    if torch.is_autocast_enabled(device.type) and (
            torch.get_autocast_dtype(device.type) == torch.bfloat16):
        return torch.bfloat16
    return torch.float32


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as float32, whatever the operands' dtype (fp32 accumulation in every case)."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def _add_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc += a @ b, in place; acc is float32."""
    return acc.addmm_(a, b) if a.dtype == torch.float32 else acc.add_(_mm(a, b))


CPU_TILE_ELEMENTS = 1 << 20  # a 4 MiB float32 tile: the elementwise passes stay in cache


def _tiles(rows: int, cols: int, block: int,
           device: torch.device) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) tiles covering rows x cols, ``block`` columns wide. On the CPU the
    rows are cut too, so each tile's elementwise work runs in cache, not at memory bandwidth
    (measured 8x faster on 2 cores); a GPU takes every row at once."""
    for c0, c1 in _blocks(cols, block):
        height = rows if device.type != "cpu" else max(1, CPU_TILE_ELEMENTS // (c1 - c0))
        for r0, r1 in _blocks(rows, height):
            yield r0, r1, c0, c1


def _softplus_sum(z: torch.Tensor) -> torch.Tensor:
    """sum(softplus(z)) = sum(max(z, 0) + log1p(exp(-|z|))), from vectorised ops (the CPU's
    softplus and log1p kernels are scalar: 10x slower); log1p(u) = u(1 - u/2) below 1e-3."""
    u = z.abs().neg_().exp_()
    small = u < 1e-3
    tail = torch.where(small, u * (1 - 0.5 * u), (u + 1).log_())
    return z.clamp(min=0).add_(tail).sum()


class _SigmoidSum(torch.autograd.Function):
    """Sum over rows x columns of -log sigmoid(label * (scale * row . col + bias)), tiled.

    Row i is positive (label +1) with column offset + i, negative (-1) with every other column.
    ``dtype`` is the matmul operand dtype (see ``block_dtype``); results are float32. With
    ``save_grads`` the forward keeps each tile's dL/dlogits in ``dtype`` (b x B values) and the
    backward skips recomputing the logits: one GEMM and two elementwise passes fewer per tile.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, cols: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor, offset: int, block: int, dtype: torch.dtype,
                save_grads: bool = False) -> torch.Tensor:
        total, saved = rows.new_zeros(()), []
        keep = save_grads and any(ctx.needs_input_grad[:4])
        with _float32(rows):
            scaled, low_cols = (rows * scale).to(dtype), cols.to(dtype)  # (b, d), (B, d)
            for r0, r1, c0, c1 in _tiles(len(rows), len(cols), block, rows.device):
                logits = _mm(scaled[r0:r1], low_cols[c0:c1].T).add_(bias)  # (r, c) float32
                # positives: -log sigmoid(z) = softplus(-z)
                logits.diagonal(offset + r0 - c0).neg_()
                total += _softplus_sum(logits)
                if keep:  # G = sigmoid(logit) - [positive] = sigmoid(z), negated on positives
                    grad = logits.sigmoid_()
                    grad.diagonal(offset + r0 - c0).neg_()
                    saved.append(grad.to(dtype))
        ctx.save_for_backward(rows, scaled, low_cols, scale, bias)
        ctx.offset, ctx.block, ctx.saved_grads = offset, block, saved
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, scaled, cols, scale, bias = ctx.saved_tensors
        with _float32(rows):
            grad_logits_cols = torch.zeros_like(rows)  # (b, d): sum_j G_ij col_j
            grad_cols = rows.new_zeros(cols.shape)  # (B, d) float32
            grad_bias = rows.new_zeros(())
            tiles = _tiles(len(rows), len(cols), ctx.block, rows.device)
            for k, (r0, r1, c0, c1) in enumerate(tiles):
                if ctx.saved_grads:
                    low = ctx.saved_grads[k]
                    grad_bias += low.sum(dtype=torch.float32)
                else:
                    grad = _mm(scaled[r0:r1], cols[c0:c1].T).add_(bias).sigmoid_()  # (r, c)
                    grad.diagonal(ctx.offset + r0 - c0).sub_(1.0)  # sigmoid(z) - [positive]
                    grad_bias += grad.sum()
                    low = grad.to(cols.dtype)
                _add_mm(grad_logits_cols[r0:r1], low, cols[c0:c1])
                _add_mm(grad_cols[c0:c1], low.T, scaled[r0:r1])  # (c, d)
            ctx.saved_grads = []
            grad_scale = torch.dot(grad_logits_cols.view(-1), rows.view(-1))  # sum_ij G_ij cos_ij
        return (grad_logits_cols.mul_(scale * grad_total), grad_cols.mul_(grad_total),
                grad_scale * grad_total, grad_bias * grad_total, None, None, None, None)


class _SoftmaxCrossEntropySum(torch.autograd.Function):
    """Sum over rows of cross-entropy of softmax(scale * row . cols) against column offset + i.

    The log-sum-exp is accumulated block by block; backward recomputes each block's softmax.
    ``dtype`` is the matmul operand dtype (see ``block_dtype``); results are float32.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, cols: torch.Tensor, scale: torch.Tensor, offset: int,
                block: int, dtype: torch.dtype) -> torch.Tensor:
        positives, block_lse = rows.new_zeros(()), []
        with _float32(rows):
            scaled, low_cols = (rows * scale).to(dtype), cols.to(dtype)  # (b, d), (B, d)
            for start, stop in _blocks(cols.shape[0], block):
                logits = _mm(scaled, low_cols[start:stop].T)  # (b, c) float32
                positives += logits.diagonal(offset - start).sum()
                block_lse.append(torch.logsumexp(logits, dim=1))  # (b,)
            lse = torch.logsumexp(torch.stack(block_lse, dim=1), dim=1)  # (b,)
        ctx.save_for_backward(rows, scaled, low_cols, scale, lse)
        ctx.offset, ctx.block = offset, block
        return lse.sum() - positives

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, scaled, cols, scale, lse = ctx.saved_tensors
        with _float32(rows):
            grad_logits_cols = torch.zeros_like(rows)  # (b, d): sum_j G_ij col_j
            grad_cols = rows.new_empty(cols.shape)  # (B, d) float32
            for start, stop in _blocks(cols.shape[0], ctx.block):
                grad = _mm(scaled, cols[start:stop].T).sub_(lse[:, None]).exp_()  # (b, c)
                grad.diagonal(ctx.offset - start).sub_(1.0)  # G = softmax - one-hot target
                low = grad.to(cols.dtype)
                _add_mm(grad_logits_cols, low, cols[start:stop])
                grad_cols[start:stop] = _mm(low.T, scaled)  # (c, d)
            grad_scale = torch.dot(grad_logits_cols.view(-1), rows.view(-1))  # sum_ij G_ij cos_ij
        return (grad_logits_cols.mul_(scale * grad_total), grad_cols.mul_(grad_total),
                grad_scale * grad_total, None, None, None)


class ContrastiveLoss(nn.Module, abc.ABC):
    """Shared plumbing: options, input checks, multi-positive averaging, named terms."""

    def __init__(self, block_size: int | None, rank: int, world_size: int,
                 group: dist.ProcessGroup | None) -> None:
        super().__init__()
        if block_size is not None and block_size < 1:
            raise UserError(f"block_size must be a positive integer or None, got {block_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"need 0 <= rank < world_size, got rank={rank}, "
                            f"world_size={world_size}")
        self.block_size, self.rank, self.world_size, self.group = (
            block_size, rank, world_size, group)

    def forward(self, image: torch.Tensor,
                text: TextInput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total to backpropagate, detached per-text terms); see the module docstring."""
        image = image.float()
        if isinstance(text, torch.Tensor):
            return self._pair_loss(image, text.float()), {}
        named = dict(text) if isinstance(text, Mapping) else dict(enumerate(text))
        if not named:
            raise ValueError("no text embeddings: pass a b x d tensor or a non-empty collection")
        losses = {name: self._pair_loss(image, t.float()) for name, t in named.items()}
        total = torch.stack(list(losses.values())).mean()
        return total, {f"loss/{name}": value.detach() for name, value in losses.items()}

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of x in rank order (B x d), or x itself on one process."""
        if self.world_size == 1:
            return x
        gathered = all_gather_with_grad(x, self.group)  # (B, d)
        if gathered.shape[0] != self.world_size * x.shape[0]:
            raise ValueError(f"gathered {gathered.shape[0]} rows from {x.shape[0]} local rows; "
                             f"the process group does not have world_size={self.world_size}")
        return gathered

    def _check(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Both embeddings must be b x d with the same b and d."""
        if image.ndim != 2 or image.shape != text.shape:
            raise ValueError(f"expected image and text embeddings of the same shape b x d, got "
                             f"{tuple(image.shape)} and {tuple(text.shape)}")

    @abc.abstractmethod
    def clamp_scale_(self) -> None:
        """Bring the learnable scale back within its bounds (after each optimiser step)."""

    @abc.abstractmethod
    def _pair_loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """This rank's share of the loss for one text tensor (subclasses define it)."""


_SAIL = {"init_scale": 20.0, "scale_bounds": (1.0, 100.0), "init_bias": -10.0,
         "normalize": "pairs"}
_SIGLIP = {"init_scale": 10.0, "scale_bounds": None, "init_bias": -10.0, "normalize": "batch"}


class SigmoidLoss(ContrastiveLoss):
    """Pairwise sigmoid loss with learnable scale and bias (SAIL; SigLIP with ``batch``).

    logits = scale * image @ text.T + bias over the global batch, scale = exp(log_scale); the
    trainer keeps it within ``scale_bounds`` with ``clamp_scale_`` after each optimiser step, as
    the official SAIL trainer does (a clamp inside the forward would zero the gradient outside
    the bounds while Lion kept moving the parameter); label +1 for the positive pair, -1 elsewhere;
    loss = -sum log sigmoid(label * logits), divided by |B|^2 (``normalize="pairs"``, SAIL) or by
    |B| (``"batch"``, SigLIP), |B| the global batch. Each rank sees all global texts as negatives
    of its local images; see the module docstring for the distributed share.
    """

    def __init__(self, init_scale: float = 20.0,
                 scale_bounds: tuple[float, float] | None = (1.0, 100.0),
                 init_bias: float = -10.0, normalize: str = "pairs",
                 block_size: int | None = None, rank: int = 0, world_size: int = 1,
                 group: dist.ProcessGroup | None = None, save_grads: bool = False) -> None:
        super().__init__(block_size, rank, world_size, group)
        self.save_grads = save_grads  # keep dL/dlogits from the forward: b x B values of memory
        if normalize not in ("pairs", "batch"):
            raise UserError(f"normalize must be 'pairs' (|B|^2, SAIL) or 'batch' (|B|, SigLIP), "
                            f"got {normalize!r}")
        self.normalize, self.scale_bounds = normalize, scale_bounds
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @classmethod
    def sail(cls, **kw: Any) -> SigmoidLoss:
        """SAIL's setting: scale 20 clamped to [1, 100], bias -10, mean over all |B|^2 pairs."""
        return cls(**{**_SAIL, **kw})

    @classmethod
    def siglip(cls, **kw: Any) -> SigmoidLoss:
        """SigLIP's setting: scale 10 (unclamped), bias -10, sum over pairs divided by |B|."""
        return cls(**{**_SIGLIP, **kw})

    @property
    def scale(self) -> torch.Tensor:
        """The logit scale in use: exp(log_scale)."""
        return self.log_scale.float().exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Clamp log_scale in place to log(scale_bounds); call after each optimiser step."""
        if self.scale_bounds is not None:
            low, high = self.scale_bounds
            self.log_scale.clamp_(math.log(low), math.log(high))

    def _pair_loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        self._check(image, text)
        texts = self._gather(text)  # (B, d)
        n = texts.shape[0]
        total = _SigmoidSum.apply(image, texts, self.scale, self.bias.float(),
                                  self.rank * image.shape[0], self.block_size or n,
                                  block_dtype(image.device), self.save_grads)
        return total / (n * n if self.normalize == "pairs" else n)


class InfoNCELoss(ContrastiveLoss):
    """Symmetric InfoNCE (CLIP): (CE image->text + CE text->image) / 2, learnable scale.

    logits = scale * image @ text.T with scale = exp(log_scale), kept at most ``max_scale`` by
    ``clamp_scale_`` after each optimiser step; each cross-entropy is averaged over the global
    batch |B|. Each rank's image rows see all global texts and its text rows all global images;
    see the module docstring.
    """

    def __init__(self, init_scale: float = 1 / 0.07, max_scale: float = 100.0,
                 block_size: int | None = None, rank: int = 0, world_size: int = 1,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(block_size, rank, world_size, group)
        self.max_scale = max_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        """The logit scale in use: exp(log_scale)."""
        return self.log_scale.float().exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Clamp log_scale in place to at most log(max_scale); call after each optimiser step."""
        self.log_scale.clamp_(max=math.log(self.max_scale))

    def _pair_loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        self._check(image, text)
        images, texts = self._gather(image), self._gather(text)  # (B, d), (B, d)
        n, offset = texts.shape[0], self.rank * image.shape[0]
        block, scale = self.block_size or n, self.scale
        dtype = block_dtype(image.device)
        image_to_text = _SoftmaxCrossEntropySum.apply(image, texts, scale, offset, block, dtype)
        text_to_image = _SoftmaxCrossEntropySum.apply(text, images, scale, offset, block, dtype)
        return (image_to_text + text_to_image) / (2 * n)


def sigmoid_loss_reference(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                           bias: torch.Tensor, normalize: str = "pairs") -> torch.Tensor:
    """Plain full-matrix sigmoid loss on one process: the definition the blocked path matches."""
    n = image.shape[0]
    logits = scale * image @ text.T + bias  # (B, B)
    labels = 2 * torch.eye(n, device=image.device) - 1  # (B, B): +1 positive pair, -1 elsewhere
    loss = -F.logsigmoid(labels * logits).sum()
    return loss / (n * n if normalize == "pairs" else n)


def infonce_loss_reference(image: torch.Tensor, text: torch.Tensor,
                           scale: torch.Tensor) -> torch.Tensor:
    """Plain full-matrix symmetric InfoNCE on one process: what the blocked path must match."""
    logits = scale * image @ text.T  # (B, B)
    target = torch.arange(image.shape[0], device=image.device)  # (B,)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


LOSSES: dict[str, tuple[type[ContrastiveLoss], dict[str, Any]]] = {
    "sigmoid": (SigmoidLoss, _SAIL),
    "siglip": (SigmoidLoss, _SIGLIP),
    "infonce": (InfoNCELoss, {}),
}


def create_loss(name: str, **kw: Any) -> ContrastiveLoss:
    """Build a loss by name ("sigmoid" = SAIL preset, "siglip", "infonce"); kw override presets."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    cls, preset = LOSSES[name]
    try:
        inspect.signature(cls).bind(**{**preset, **kw})
    except TypeError as err:
        options = ", ".join(inspect.signature(cls).parameters)
        raise UserError(f"bad options {kw} for loss {name!r} ({err}); its options: {options}"
                        ) from None
    return cls(**{**preset, **kw})
