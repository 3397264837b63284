"""The UTA student: an EVA-02-style ViT that runs only the kept patch tokens plus CLS.

Architecture: patches -> linear embedding + learned absolute position embedding; a CLS token;
pre-norm blocks whose attention applies 2-D rotary position embedding (RoPE) to the queries and
keys of patch tokens (CLS is not rotated) and whose MLP is SwiGLU; a final LayerNorm; one linear
projection head to the teacher's dimension, SHARED by CLS and patch tokens (both targets live in
the teacher's one joint space, so every token's supervision also trains the map the zero-shot CLS
embedding goes through, and dense outputs come out comparable with text).

Dropping patches is exact: patches are embedded one by one (a linear map of each flattened patch),
so a kept token's output never depends on the pixels of dropped patches; absolute positions and
RoPE angles are taken at the kept positions. The image size is fixed per model (the learned
position table has one row per patch of ``img_size``); the patch grid is ``config.grid``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.uta.masking import gather_tokens

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},
    "small": {"dim": 384, "depth": 12, "heads": 6},
    "base": {"dim": 768, "depth": 12, "heads": 12},
    "large": {"dim": 1024, "depth": 24, "heads": 16},
}


@dataclass
class StudentConfig:
    """Everything that defines a student's shape; ``asdict`` of it is its JSON config."""

    out_dim: int  # the teacher's joint-space dimension
    img_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 8 / 3  # EVA-02's SwiGLU width: as many parameters as a 4x GELU MLP
    rope_theta: float = 10000.0
    in_chans: int = 3
    mask_token: bool = False  # a learned [MASK] embedding, for the EVA-02-style MIM baseline

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.dim % self.heads or (self.dim // self.heads) % 4:
            raise ValueError(f"dim {self.dim} / heads {self.heads} must give a head dim "
                             "divisible by 4 (2-D RoPE rotates pairs along rows and columns)")

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid; N = rows * cols patch tokens."""
        side = self.img_size // self.patch_size
        return side, side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def student_config(size: str, out_dim: int, **overrides: Any) -> StudentConfig:
    """Config of a named size (tiny/small/base/large) with any field overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown student size {size!r}; valid: {', '.join(SIZES)}")
    return StudentConfig(out_dim=out_dim, **{**SIZES[size], **overrides})


class StudentOutput(NamedTuple):
    """Projected outputs: cls B x out_dim, tokens B x K x out_dim (K = patches run)."""

    cls: torch.Tensor
    tokens: torch.Tensor


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """B x C x H x W -> B x N x (C*patch*patch), patches in row-major grid order."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def rope_cos_sin(positions: torch.Tensor, cols: int, head_dim: int,
                 theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin B x (1+K) x head_dim for CLS (angle 0: unrotated) plus patches at ``positions``.

    Dimension pairs (i, i + head_dim/2) rotate together (rotate-half layout); the first quarter
    of the pairs' frequencies follow the patch row, the second quarter the column.
    """
    quarter = head_dim // 4
    inv_freq = theta ** (-torch.arange(quarter, device=positions.device) / quarter)
    rows, columns = (positions // cols).float(), (positions % cols).float()
    angles = torch.cat([rows[..., None] * inv_freq, columns[..., None] * inv_freq], dim=-1)
    angles = F.pad(angles, (0, 0, 1, 0))  # CLS row of zeros
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate B x heads x T x head_dim by the angles behind cos/sin (B x T x head_dim)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with 2-D RoPE on queries and keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)  # B x heads x T x head_dim
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    """Gated MLP: W_out(SiLU(W_a x) * W_b x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2 * hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + mlp(LN x)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class UTAStudent(nn.Module):
    """EVA-02-style ViT; ``forward(pixels, keep)`` runs only the kept patches plus CLS."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        n = c.grid[0] * c.grid[1]
        self.patch_embed = nn.Linear(c.in_chans * c.patch_size ** 2, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, c.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.mask_token else None
        hidden = int(c.dim * c.mlp_ratio)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, hidden) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal(0.02) weights, zero biases; residual outputs scaled down by depth."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for param in (self.cls_token, self.pos_embed, self.mask_token):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)
        for layer, block in enumerate(self.blocks, start=1):  # EVA-02 / BEiT rescaling
            block.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
            block.mlp.proj.weight.data.div_(math.sqrt(2.0 * layer))

    @property
    def num_patches(self) -> int:
        return self.config.grid[0] * self.config.grid[1]

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay (embeddings, tokens)."""
        return {"cls_token", "pos_embed"} | ({"mask_token"} if self.config.mask_token else set())

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Checked pixels -> flattened patches B x N x (C*patch*patch)."""
        size = self.config.img_size
        if pixels.ndim != 4 or pixels.shape[-2:] != (size, size):
            raise ValueError(f"the student takes B x C x {size} x {size} pixels, got "
                             f"{tuple(pixels.shape)}")
        return patchify(pixels, self.config.patch_size)

    def _run(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Patch embeddings B x K x dim at grid ``positions`` B x K -> normed B x (1+K) x dim."""
        x = x + gather_tokens(self.pos_embed[:, 1:].expand(x.shape[0], -1, -1), positions)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        head_dim = self.config.dim // self.config.heads
        cos, sin = rope_cos_sin(positions, self.config.grid[1], head_dim, self.config.rope_theta)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def _all_positions(self, pixels: torch.Tensor) -> torch.Tensor:
        n = self.num_patches
        return torch.arange(n, device=pixels.device).expand(pixels.shape[0], n)

    def forward_tokens(self, pixels: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states B x (1+K) x dim: CLS, then the kept patches in order."""
        patches = self._patches(pixels)
        if keep is None:
            return self._run(self.patch_embed(patches), self._all_positions(pixels))
        return self._run(self.patch_embed(gather_tokens(patches, keep)), keep)  # only K embedded

    def forward_features(self, pixels: torch.Tensor,
                         keep: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled representation before projection (the normed CLS, B x dim): for classifiers."""
        return self.forward_tokens(pixels, keep)[:, 0]

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> StudentOutput:
        """Project CLS and the kept tokens (all patches when ``keep`` is None) to the teacher."""
        out = self.head(self.forward_tokens(pixels, keep))
        return StudentOutput(cls=out[:, 0], tokens=out[:, 1:])

    def forward_masked(self, pixels: torch.Tensor, mask: torch.Tensor) -> StudentOutput:
        """MIM baseline: masked patches (``mask`` B x N, True = masked) become the learned mask
        token; all N tokens plus CLS run. Needs ``config.mask_token``."""
        if self.mask_token is None:
            raise ValueError("this student has no mask token; build it with mask_token=True")
        x = self.patch_embed(self._patches(pixels))
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        out = self.head(self._run(x, self._all_positions(pixels)))
        return StudentOutput(cls=out[:, 0], tokens=out[:, 1:])


def create_student(size: str, out_dim: int, **overrides: Any) -> UTAStudent:
    """A freshly initialised student of a named size, any config field overridden."""
    return UTAStudent(student_config(size, out_dim, **overrides))
