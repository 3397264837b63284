"""The UTA student: timm's EVA-02 ViT (``timm.models.eva.Eva``) that runs only the kept patches.

The trunk is timm's own model, built by name (``eva02_tiny_patch14_224``,
``eva02_base_patch16_clip_224``, ...), so every EVA-02 detail (SwiGLU with or without its
sub-LN, RoPE scaled to the model's reference grid, q/v biases, LayerNorm eps, drop path,
gradient checkpointing, ``set_input_size``) is timm's and released weights load through
timm's checkpoint filter. vlalign adds the kept-token forward that UTA trains with: embed the
patches, add absolute positions, gather the kept tokens, gather RoPE at the kept positions, run
the blocks. With every patch kept it equals timm's ``forward_features`` (tested).

One linear projection head maps the normed tokens to the teacher's joint space. It is SHARED by
CLS and patch tokens: both targets live in the teacher's one space, so every token's supervision
also trains the map the zero-shot CLS embedding goes through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlalign.uta.masking import gather_tokens
from vlalign.utils.optional import require

if TYPE_CHECKING:
    from timm.models.eva import Eva

# timm's names for the config fields a student may override (0 keeps the model's own value)
TIMM_ARGS = {"img_size": "img_size", "patch_size": "patch_size", "dim": "embed_dim",
             "depth": "depth", "heads": "num_heads", "mlp_ratio": "mlp_ratio"}


def student_names() -> list[str]:
    """timm's EVA / EVA-02 models a student can be built from (every size and CLIP variant)."""
    timm = require("timm", "backbones")  # imported on first use: loading SAIL needs no timm
    return sorted(set(timm.list_models("eva02_*")) | set(timm.list_models("eva_giant_*")))


@dataclass
class StudentConfig:
    """Everything that defines a student's shape; ``asdict`` of it is its JSON config. After
    ``create_student`` every 0 field holds the model's resolved value."""

    name: str  # a timm EVA-02 model name, e.g. eva02_tiny_patch14_224
    out_dim: int  # the teacher's joint-space dimension
    img_size: int = 0
    patch_size: int = 0
    dim: int = 0
    depth: int = 0
    heads: int = 0
    mlp_ratio: float = 0.0  # SwiGLU hidden width / dim (EVA-02: 4 * 2 / 3)
    drop_path: float = 0.0  # stochastic depth at the last block (timm's linear rule)
    mask_token: bool = False  # a learned [MASK] embedding, for the EVA-02-style MIM baseline

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid; N = rows * cols patch tokens."""
        side = self.img_size // self.patch_size
        return side, side

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model``: the non-zero overrides."""
        kwargs = {timm_name: getattr(self, field) for field, timm_name in TIMM_ARGS.items()
                  if getattr(self, field)}
        return {**kwargs, "drop_path_rate": self.drop_path}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StudentOutput(NamedTuple):
    """Projected outputs: cls B x out_dim, tokens B x K x out_dim (K = patches run)."""

    cls: torch.Tensor
    tokens: torch.Tensor


def _build_trunk(config: StudentConfig) -> Eva:
    """timm's model of ``config.name`` with the overrides, without a classifier; CLS pooling, so
    its final LayerNorm applies to every token (timm moves it after pooling for 'avg')."""
    if config.name not in student_names():
        raise ValueError(f"unknown student {config.name!r}; timm's EVA-02 models: "
                         f"{', '.join(student_names())}")
    timm = require("timm", "backbones")
    try:
        trunk = timm.create_model(config.name, pretrained=False, num_classes=0,
                                  global_pool="token", **config.timm_kwargs())
    except (AssertionError, ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"student {config.name} with {config.timm_kwargs()}: {error}") from None
    if (trunk.cls_token is None or trunk.pos_embed is None or trunk.no_embed_class
            or trunk.reg_token is not None or trunk.dynamic_img_size or trunk.rope_mixed):
        raise ValueError(f"student {config.name}: vlalign's kept-token forward needs a CLS token "
                         "and a position table that covers it, without register tokens")
    return trunk


def _resolved(config: StudentConfig, trunk: Eva) -> StudentConfig:
    """``config`` with every 0 field replaced by the value timm built."""
    rows, cols = trunk.patch_embed.grid_size
    size, patch = trunk.patch_embed.img_size[0], trunk.patch_embed.patch_size[0]
    if size % patch:  # timm floors the grid and leaves the border pixels out
        raise ValueError(f"img_size {size} is not a multiple of patch_size {patch}")
    if rows != cols:
        raise ValueError(f"student {config.name}: the patch grid {rows} x {cols} is not square")
    return replace(config, img_size=size, patch_size=patch, dim=trunk.embed_dim,
                   depth=len(trunk.blocks), heads=trunk.blocks[0].attn.num_heads,
                   mlp_ratio=config.mlp_ratio)


class UTAStudent(nn.Module):
    """timm EVA-02 trunk + shared projection head; ``forward(pixels, keep)`` runs only the kept
    patches plus CLS."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.trunk = _build_trunk(config)
        self.config = _resolved(config, self.trunk)
        dim = self.config.dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.mask_token else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(dim, config.out_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def num_patches(self) -> int:
        return self.config.grid[0] * self.config.grid[1]

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay (embeddings, tokens)."""
        present = {name for name, _ in self.trunk.named_parameters()}
        names = {f"trunk.{name}" for name in self.trunk.no_weight_decay() & present}
        return names | ({"mask_token"} if self.mask_token is not None else set())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward instead of keeping its activations."""
        self.trunk.set_grad_checkpointing(enable)

    def set_input_size(self, img_size: int) -> None:
        """Run at another resolution: timm resamples the position table and the RoPE grid."""
        self.trunk.set_input_size(img_size=(img_size, img_size))
        self.config = replace(self.config, img_size=img_size)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly to ``rate`` at the last block (timm's rule)."""
        from timm.layers import DropPath

        depth = len(self.trunk.blocks)
        for index, block in enumerate(self.trunk.blocks):
            block_rate = rate * index / max(depth - 1, 1)
            for name in ("drop_path1", "drop_path2"):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())
        self.config = replace(self.config, drop_path=rate)

    def _checked(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.img_size
        if pixels.ndim != 4 or pixels.shape[-2:] != (size, size):
            raise ValueError(f"the student takes B x C x {size} x {size} pixels, got "
                             f"{tuple(pixels.shape)}")
        return pixels

    def _embed(self, pixels: torch.Tensor, mask: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS B x 1 x dim and patch tokens B x N x dim, positions added; ``mask`` (B x N,
        True = masked) swaps patches for the mask token before the positions, as in EVA-02."""
        trunk = self.trunk
        x = trunk.patch_embed(self._checked(pixels))
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + trunk.pos_embed[:, 1:]
        cls = (trunk.cls_token + trunk.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return cls, x

    def _run(self, cls: torch.Tensor, x: torch.Tensor,
             keep: torch.Tensor | None) -> torch.Tensor:
        """Blocks over [CLS; patches] with RoPE at the kept positions -> final-norm tokens."""
        trunk = self.trunk
        rope = trunk.rope.get_embed() if trunk.rope is not None else None  # N x rope_dim
        if rope is not None and keep is not None:
            rope = gather_tokens(rope.expand(keep.shape[0], -1, -1), keep).unsqueeze(1)
        x = trunk.norm_pre(trunk.pos_drop(torch.cat([cls, x], dim=1)))
        for block in trunk.blocks:
            if trunk.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope=rope, use_reentrant=False)
            else:
                x = block(x, rope=rope)
        return trunk.norm(x)

    def forward_tokens(self, pixels: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states B x (1+K) x dim: CLS, then the kept patches in order."""
        cls, x = self._embed(pixels)
        if keep is not None:
            x = gather_tokens(x, keep)
        return self._run(cls, x, keep)

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
        cls, x = self._embed(pixels, mask)
        out = self.head(self._run(cls, x, None))
        return StudentOutput(cls=out[:, 0], tokens=out[:, 1:])


def create_student(name: str, out_dim: int, **overrides: Any) -> UTAStudent:
    """A freshly initialised student from timm's ``name``, any StudentConfig field overridden."""
    return UTAStudent(StudentConfig(name=name, out_dim=out_dim, **overrides))
