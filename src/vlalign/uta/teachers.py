"""Frozen UTA teachers: images -> per-position tokens plus a pooled embedding, and strings ->
text embeddings, all in one joint image-text space (DESIGN 1.3, 1.4).

Adapters: an open_clip model (``open_clip:<arch>/<tag|file>``, ``open_clip:<folder>``; ViT towers
and timm towers such as EVA-CLIP), a transformers CLIPModel (``hf:<folder-or-repo>``) and a
vlalign SAIL model (``sail:<run dir or saved model>``), and the text-only tower of an imported
official UTA checkpoint (``uta-text:<folder>``, written by ``vlalign import-uta``; it serves a
UTA model's zero-shot text side and cannot be distilled from). Every adapter takes pixels already
preprocessed as its ``preprocess`` says (its library's resize and crop to ``preprocess.size``) and
returns ordinary float32 tensors without gradient, usable directly as loss targets. Embeddings are
not L2-normalised (the cosine losses do not need it).

A teacher's token grid is fixed by its patch size and input size and need not match the student's:
``TeacherOutput.to_grid`` resamples the token map bilinearly (see ``resample_tokens``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from vlalign.backbones.base import BaseTextEncoder, Preprocess, TextEncoder, VisionEncoder
from vlalign.errors import UserError
from vlalign.sail.artifact import AlignmentHeads, load_backbones, token_head_inputs
from vlalign.spec import Grammar, Spec

log = logging.getLogger(__name__)
TEACHER_SCHEMES = ("open_clip", "hf", "sail", "uta-text")
TEACHERS = Grammar("scheme", TEACHER_SCHEMES, stage=True, options=True)


def resample_tokens(tokens: torch.Tensor, grid: tuple[int, int],
                    target: tuple[int, int]) -> torch.Tensor:
    """Token map B x (h*w) x D on ``grid`` -> B x (h'*w') x D on ``target`` (row-major).

    Each token is the value of a vector field at its patch centre; the field is resampled
    bilinearly with ``align_corners=False`` (patch centres of both grids spread over the same
    image; positions beyond the outer centres take the border value), channel by channel. So a
    constant field stays constant, a 2x shrink is exactly the mean of each 2 x 2 block, and the
    same grid returns ``tokens`` unchanged. Resampled tokens are not renormalised.
    """
    if tuple(grid) == tuple(target):
        return tokens
    b, n, d = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens do not fill a {grid[0]} x {grid[1]} grid")
    field = tokens.transpose(1, 2).reshape(b, d, *grid).float()
    field = F.interpolate(field, size=tuple(target), mode="bilinear", align_corners=False)
    return field.flatten(2).transpose(1, 2).to(tokens.dtype)


class TeacherOutput(NamedTuple):
    """tokens B x N x D on ``grid`` (rows, cols), N = rows * cols; pooled B x D."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    grid: tuple[int, int]

    def to_grid(self, grid: tuple[int, int]) -> TeacherOutput:
        """The same targets with the token map resampled to ``grid`` (the student's)."""
        return TeacherOutput(resample_tokens(self.tokens, self.grid, grid), self.pooled,
                             tuple(grid))


@runtime_checkable
class Teacher(Protocol):
    """A frozen CLIP-like model seen through what UTA needs from it."""

    identity: str  # stable string naming the model and weights (e.g. for cached targets)
    dim: int  # joint-space dimension = the student's out_dim
    preprocess: Preprocess  # how pixels must be prepared (size, mean, std)

    def encode_image_tokens(self, pixels: torch.Tensor) -> TeacherOutput: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


def _grid(pixels: torch.Tensor, patch: tuple[int, int], n: int) -> tuple[int, int]:
    grid = (pixels.shape[-2] // patch[0], pixels.shape[-1] // patch[1])
    if grid[0] * grid[1] != n:
        raise UserError(f"teacher returned {n} tokens for a {grid[0]} x {grid[1]} patch grid")
    return grid


class OpenCLIPTeacher:
    """An open_clip model. Tokens: the last block's patch tokens through the tower's final norm
    and output projection, one by one (``forward_intermediates`` of the visual tower); pooled:
    ``encode_image``. ViT towers use ``ln_post`` and ``proj``; timm towers (EVA-CLIP) the trunk's
    ``norm``, ``fc_norm`` and ``head`` and the adapter's projection. Attention-pooled towers
    (CoCa, SigLIP ``map``) and CNNs have no per-position joint-space tokens and are refused."""

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        from vlalign.backbones.open_clip_adapter import (
            OpenCLIPText,
            load_open_clip,
            open_clip_preprocess,
        )

        self.model, tokenizer, self.identity = load_open_clip(spec, device)
        self.device = torch.device(device)
        self.text = OpenCLIPText(self.model, tokenizer, self.identity, device)
        self.patch = self._check_tower(spec)
        self.preprocess = open_clip_preprocess(self.model)
        side = self.preprocess.size
        self.dim = self.encode_image_tokens(torch.zeros(1, 3, side, side)).pooled.shape[1]

    def _check_tower(self, spec: Spec) -> tuple[int, int]:
        """The tower's patch size; a UserError for towers without joint-space tokens."""
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is None and visual.pool_type in ("tok", "avg"):
                return tuple(visual.patch_size)
        elif isinstance(visual, TimmModel):
            trunk = visual.trunk
            if (getattr(trunk, "attn_pool", None) is None and "pool" not in visual.head._modules
                    and all(hasattr(trunk, a) for a in ("fc_norm", "patch_embed", "head"))):
                return tuple(trunk.patch_embed.patch_size)
        raise UserError(f"{str(spec)!r}: only ViT towers without attention pooling give "
                        "per-position tokens in the joint space; this one cannot be a UTA teacher")

    def set_grid(self, grid: tuple[int, int]) -> bool:
        """Run the tower on ``grid`` (input = grid x patch pixels) when it can change its input
        size (timm towers: ``set_input_size`` resamples positions and RoPE); False otherwise."""
        trunk = getattr(self.model.visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "set_input_size") or grid[0] != grid[1]:
            return False
        side = grid[0] * self.patch[0]
        trunk.set_input_size(img_size=(side, side))
        self.preprocess = self.preprocess.with_size(side)
        return True

    @torch.no_grad()
    def encode_image_tokens(self, pixels: torch.Tensor) -> TeacherOutput:
        """Projected patch tokens on the patch grid and the pooled image embedding."""
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        x = pixels.to(self.device, torch.float32)
        out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True,
                                           output_fmt="NLC")
        tokens = out["image_intermediates"][-1]
        if isinstance(visual, VisionTransformer):
            if visual.proj is not None:
                tokens = tokens @ visual.proj
        else:
            tokens = visual.head(visual.trunk.head(visual.trunk.fc_norm(tokens)))
        return TeacherOutput(tokens.float(), out["image_features"].float(),
                             _grid(x, self.patch, tokens.shape[1]))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B x dim text embeddings (``encode_text`` of the tokenised strings)."""
        return self.text.encode(texts)


class HFCLIPTeacher:
    """A transformers CLIPModel folder (or cached Hub repo). Tokens: vision ``last_hidden_state``
    patches -> ``post_layernorm`` -> ``visual_projection``, per token; pooled: image_embeds
    (= ``get_image_features``); text: text_embeds (= ``get_text_features``). Built on the
    ``hf:`` backbone adapters (``pool=proj`` for the image tower)."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        from vlalign.backbones import create_text_encoder, create_vision_encoder

        self.vision = create_vision_encoder(f"hf:{name}?pool=proj", device=device)
        self.text = create_text_encoder(f"hf:{name}?pool=proj", device=device)
        self.identity = self.vision.identity
        self.preprocess = self.vision.preprocess
        self.dim = self.vision.dim

    def encode_image_tokens(self, pixels: torch.Tensor) -> TeacherOutput:
        """Projected patch tokens on the patch grid and the projected pooled embedding."""
        out = self.vision.encode(pixels, tokens=True)
        return TeacherOutput(out.tokens, out.pooled, out.grid)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B x dim text embeddings."""
        return self.text.encode(list(texts))


def _heads_digest(heads: AlignmentHeads) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class SAILTeacher:
    """A vlalign SAIL model (frozen backbones + ``AlignmentHeads``): its vision head applied to
    every token of the frozen backbone's token map (``[CLS ; patch]`` for ViTs, the token for
    CNNs; see ``vlalign.sail.artifact.token_head_inputs``) and to the pooled vector; text through
    the text head."""

    def __init__(self, vision: VisionEncoder, text: TextEncoder, heads: AlignmentHeads) -> None:
        self.vision, self.text, self.heads = vision, text, heads
        self.preprocess = vision.preprocess
        self.identity = f"sail:{vision.identity}|{text.identity}#{_heads_digest(heads)}"
        side = self.preprocess.size
        self.dim = self.encode_image_tokens(torch.zeros(1, 3, side, side)).pooled.shape[1]

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> SAILTeacher:
        """Load a SAIL run directory or saved model folder."""
        heads = AlignmentHeads.from_pretrained(path).to(device)
        return cls(*load_backbones(heads.config, device, path), heads)

    def encode_image_tokens(self, pixels: torch.Tensor) -> TeacherOutput:
        """Per-token joint-space embeddings on the backbone's grid, and the pooled embedding."""
        out = self.vision.encode(pixels.to(self.heads.device), tokens=True)
        tokens = self.heads.encode_image_features(token_head_inputs(out), normalize=False)
        pooled = self.heads.encode_image_features(out.pooled, normalize=False)
        return TeacherOutput(tokens.clone(), pooled.clone(), out.grid)  # clone: not inference

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B x dim text embeddings (text backbone, then the text head)."""
        features = self.text.encode(list(texts))
        return self.heads.encode_text_features(features, normalize=False).clone()


class UTATextTeacher(BaseTextEncoder):
    """The text tower of an official UTA checkpoint, imported by ``vlalign import-uta`` into a
    folder (``text.json`` + ``text.safetensors``; see ``vlalign.uta.official``): open_clip's
    TextTransformer with the official tokenizer (``open_clip.tokenize``). ``preprocess`` is the
    official image transform of the checkpoint's student; ``model.logit_scale`` its CLIP's.
    Text only: it has no image tower, so it cannot be a distillation teacher."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from vlalign.uta.official import load_text_tower

        self.folder = Path(folder)
        self.model, self.preprocess, self.identity = load_text_tower(self.folder)
        self.dim = self.model.output_dim
        self.to(device)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model(self.model.tokenize(texts).to(self.device))

    def encode_image_tokens(self, pixels: torch.Tensor) -> TeacherOutput:
        raise UserError(f"uta-text:{self.folder} is an imported UTA text tower without an image "
                        "tower: it cannot be a distillation teacher (use an open_clip, hf or "
                        "sail teacher)")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B x dim text embeddings (the official ``encode_text``)."""
        return self.encode(list(texts))

    def copy_to(self, folder: str | Path) -> None:
        """Put this tower's two files into ``folder`` as well, so a model saved there keeps a
        valid ``uta-text:.`` spec; nothing to do when ``folder`` is the tower's own."""
        from vlalign.uta.official import copy_text_tower

        copy_text_tower(self.folder, Path(folder))


def resolve_teacher_spec(spec: str, folder: str | Path) -> str:
    """``spec`` as a model folder's config records it, made usable from anywhere: a relative
    ``uta-text:`` path (an import-uta folder names its own text tower ``uta-text:.``) is taken
    relative to ``folder``; other specs are returned unchanged."""
    parsed = TEACHERS.parse(spec)
    if parsed.scheme != "uta-text" or Path(parsed.name).is_absolute():
        return spec
    return f"uta-text:{Path(folder) / parsed.name}"


def match_teacher_grid(teacher: Teacher, grid: tuple[int, int]) -> tuple[int, int]:
    """Put the teacher on the student's token grid where it can run there (EVA-02 feeds its
    teacher the student's patch grid); returns the grid its tokens now come on (its own when it
    cannot change, and its tokens are then resampled)."""
    if isinstance(teacher, OpenCLIPTeacher) and teacher.set_grid(grid):
        log.info("teacher runs at %d px: its tokens fall on the student's %d x %d grid",
                 teacher.preprocess.size, *grid)
        return tuple(grid)
    side = teacher.preprocess.size
    return teacher.encode_image_tokens(torch.zeros(1, 3, side, side)).grid


def create_teacher(spec: str, device: str = "cpu") -> Teacher:
    """Build the teacher a spec names: ``open_clip:...``, ``hf:<CLIP folder or repo>`` or
    ``sail:<run dir or saved model>`` or ``uta-text:<imported text tower folder>``."""
    parsed = TEACHERS.parse(spec)
    if parsed.scheme == "open_clip":
        return OpenCLIPTeacher(parsed, device)
    if parsed.options or parsed.stage:
        raise UserError(f"spec {spec!r}: {parsed.scheme} teachers take no options or @stage")
    if parsed.scheme == "hf":
        return HFCLIPTeacher(parsed.name, device)
    if parsed.scheme == "uta-text":
        return UTATextTeacher(parsed.name, device)
    return SAILTeacher.load(parsed.name, device)
