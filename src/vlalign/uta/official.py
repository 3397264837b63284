"""The official UTA checkpoint layout (github.com/jihaonew/UTA), imported strictly into a vlalign
UTA model folder.

The released checkpoints (HF ``jjjjh/UTA``: UTA-B/16, UTA-L/14-336, UTA-g/14-336) are the full
state dict of the official ``uta_clip.CLIP``: ``visual.*`` (``eva_vit.EVAVisionTransformer``),
``text.*`` (``transformer.text_transformer()``) and ``logit_scale``. Per visual block ``i``::

    visual.blocks.i.norm1.{weight,bias}                 LayerNorm(dim, eps 1e-6)
    visual.blocks.i.attn.{q_bias,v_bias}                (dim,)  no k bias
    visual.blocks.i.attn.{q,k,v}_proj.weight            (dim, dim)  separate q/k/v (subln=True)
    visual.blocks.i.attn.proj.{weight,bias}
    visual.blocks.i.attn.rope.freqs_{cos,sin}           (N, head_dim)  the shared RoPE buffers
    visual.blocks.i.norm2.{weight,bias}
    visual.blocks.i.mlp.{w1,w2}.{weight,bias}           (hidden, dim)  SwiGLU: silu(w1 x) * w2 x
    visual.blocks.i.mlp.ffn_ln.{weight,bias}            (hidden,)  its sub-LN
    visual.blocks.i.mlp.w3.{weight,bias}                (dim, hidden)

plus ``visual.{cls_token, pos_embed, patch_embed.proj.*, rope.freqs_{cos,sin}, norm.*, head.*}``.

How the official configs (``eva_vit.py``) map to timm (``timm/models/eva.py``): every one is timm's
EVA-02 recipe with ``qkv_fused=False`` (q_proj/k_proj/v_proj, q and v biases),
``swiglu_mlp=True, scale_mlp=True`` (SwiGLU with its sub-LN; ``w1 -> fc1_g``, ``w2 -> fc1_x``,
``ffn_ln -> norm``, ``w3 -> fc2``), RoPE with ``ref_feat_shape=(16, 16)`` and LayerNorm eps 1e-6:

- ``eva_base_p16`` (UTA-B/16, 224 px): ``eva02_base_patch14_224`` with ``patch_size=16``. Hidden
  ``int(768 * 2.6667) = 2048``, timm's ``int(768 * 8/3)`` too.
- ``eva_large_p14_336`` (UTA-L/14-336): ``eva02_large_patch14_224`` with ``img_size=336``.
- ``eva_giant_p14_336`` (UTA-g/14-336): no timm config. timm's ``eva_giant_patch14_*`` (clip or
  not) are EVA-01 giants: a GELU MLP 6144 wide, fused qkv, no sub-LN, no RoPE. UTA-g is an
  EVA-02-style giant: SwiGLU ``int(1408 * 2.9091) = 4096`` wide with sub-LN, RoPE, separate q/k/v.
  So it is the EVA-02 large recipe with ``dim=1408, depth=40, heads=16`` and an MLP ratio
  override (``StudentConfig.mlp_ratio``).

Not timm's ``eva02_*_clip_*`` models: they set ``scale_attn_inner=True`` (EVA-CLIP's
``inner_attn_ln``, a LayerNorm on the attention output before ``proj``), which UTA's eva_vit.py
comments out (``self.inner_attn_ln = nn.Identity()``); a UTA checkpoint has no such weights.
The rest matches timm exactly: RoPE (``VisionRotaryEmbeddingFast(head_dim / 2, pt_seq_len=16,
ft_seq_len=grid)`` since ``intp_freq=True``: positions ``arange(grid) / grid * 16``, interleaved
rotation, CLS not rotated; the import checks the stored buffers against timm's), the absolute
position table that covers CLS, no layer scale (``init_values=None``), no post-norm, no relative
position bias, and the pooling: ``use_mean_pooling=False`` applies ``norm`` to every token and takes
CLS, which is timm's ``global_pool='token'``; ``visual.head`` (``Linear(dim, 1024)`` with bias)
becomes the student's ``head``, so ``student(pixels).cls`` is the official ``encode_image``.
``xattn`` (xformers' memory-efficient attention, scale ``head_dim ** -0.5``, no mask) is
ordinary softmax attention. The width inference (dim, depth, patch, grid from the tensor shapes)
also accepts sizes no release has (tests build a small one); the number of heads comes from the
RoPE buffers (``head_dim = freqs_cos.shape[1]``).

The text tower is open_clip's ``TextTransformer`` as it is: ``text_transformer()`` is width 1024,
24 layers, 16 heads, context 77, vocab 49408, MLP 4x with nn.GELU (not QuickGELU), LayerNorm eps
1e-5, a causal mask, ``ln_final`` then the argmax (EOT) token, ``text_projection`` (1024 x 1024,
no bias). Its xformers attention keeps nn.MultiheadAttention's parameter names (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), so ``text.*`` loads into open_clip's module unchanged. Text
heads are not in any shape: ``width // 64`` (16 for 1024, CLIP's head width 64) unless given.
The tokenizer is the official one, ``open_clip.tokenize`` (SimpleTokenizer: lower-cased, BPE,
``<start>`` ... ``<end>``, zero padded to the context length). The image preprocessing is the
official one (``imagenet_zeroshot_eval.py``, ``demo.py``): shortest edge to the input size,
bicubic, centre crop, OpenAI CLIP mean and std. The official evaluation scores ``100 * cosine``,
as vlalign's ``classify`` does; the checkpoint's ``logit_scale`` is kept as the model's (what
``forward`` returns, exp'd, as open_clip's CLIP does).

The imported folder holds ``uta.json`` + ``student.safetensors`` (the student) and
``text.json`` + ``text.safetensors`` (the text tower: the official ``text.*`` and ``logit_scale``
tensors, unchanged names). ``uta.json`` names the teacher ``uta-text:.``, resolved against the
model folder, so the folder can be moved or copied whole.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from math import isqrt
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlalign.backbones.base import CLIP_MEAN, CLIP_STD, Preprocess
from vlalign.errors import UserError
from vlalign.uta.artifact import CONFIG, save_student
from vlalign.uta.student import StudentConfig, UTAStudent
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_file,
)

log = logging.getLogger(__name__)

TEXT_CONFIG = "text.json"
TEXT_WEIGHTS = "text.safetensors"
TEXT_SPEC = "uta-text:."  # the teacher spec an imported model records (its own folder)
TEXT_FORMAT = "vlalign-uta-text"
WRAPPERS = ("model", "state_dict", "module")  # trainer checkpoints that hold the state dict
VOCAB = 49408  # open_clip's SimpleTokenizer: 49152 merges + 256 bytes x 2 + <start>, <end>
TEXT_HEAD_DIM = 64  # the rule for the text heads: CLIP's head width
TIMM_RATIO = 4 * 2 / 3  # timm's EVA-02 mlp_ratio; hidden = int(dim * ratio)
RELEASES = {  # (patch, dim, depth, heads, hidden) -> (release, timm model of the student)
    (16, 768, 12, 12, 2048): ("UTA-B/16", "eva02_base_patch14_224"),
    (14, 1024, 24, 16, 2730): ("UTA-L/14", "eva02_large_patch14_224"),
    (14, 1408, 40, 16, 4096): ("UTA-g/14", "eva02_large_patch14_224"),
}
OTHER_SIZES = "eva02_base_patch14_224"  # shapes of no release: the same recipe, all overridden
# official visual name -> timm name (after the "visual." prefix); rope buffers are not weights
VISUAL_RENAMES = (("attn.q_bias", "attn.q_proj.bias"), ("attn.v_bias", "attn.v_proj.bias"),
                  ("mlp.w1.", "mlp.fc1_g."), ("mlp.w2.", "mlp.fc1_x."),
                  ("mlp.w3.", "mlp.fc2."), ("mlp.ffn_ln.", "mlp.norm."))
_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.")
_LAYER = re.compile(r"^text\.transformer\.resblocks\.(\d+)\.")


@dataclass(frozen=True)
class VisualShape:
    """The official visual tower's sizes, read from the tensors."""

    patch: int
    dim: int
    grid: int  # patches per side
    depth: int
    heads: int
    hidden: int  # SwiGLU width
    out_dim: int  # visual.head: the joint space

    @property
    def img_size(self) -> int:
        return self.grid * self.patch

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class TextShape:
    """The official text tower's sizes; the file format of ``text.json`` (with ``format``)."""

    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    output_dim: int


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# --- the layout ----------------------------------------------------------------------------------

def visual_shapes(v: VisualShape) -> dict[str, tuple[int, ...]]:
    """Every ``visual.*`` key of the official tower and its shape."""
    d, n = v.dim, v.grid * v.grid
    rope = {f"rope.freqs_{f}": (n, v.head_dim) for f in ("cos", "sin")}
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "pos_embed": (1, n + 1, d),
        "patch_embed.proj.weight": (d, 3, v.patch, v.patch), "patch_embed.proj.bias": (d,),
        **rope}
    for i in range(v.depth):
        block = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.q_bias": (d,),
                 "attn.v_bias": (d,), "attn.q_proj.weight": (d, d), "attn.k_proj.weight": (d, d),
                 "attn.v_proj.weight": (d, d), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
                 **{f"attn.{k}": s for k, s in rope.items()},
                 "norm2.weight": (d,), "norm2.bias": (d,),
                 "mlp.w1.weight": (v.hidden, d), "mlp.w1.bias": (v.hidden,),
                 "mlp.w2.weight": (v.hidden, d), "mlp.w2.bias": (v.hidden,),
                 "mlp.ffn_ln.weight": (v.hidden,), "mlp.ffn_ln.bias": (v.hidden,),
                 "mlp.w3.weight": (d, v.hidden), "mlp.w3.bias": (d,)}
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    shapes.update({"norm.weight": (d,), "norm.bias": (d,), "head.weight": (v.out_dim, d),
                   "head.bias": (v.out_dim,)})
    return {f"visual.{k}": s for k, s in shapes.items()}


def text_shapes(t: TextShape) -> dict[str, tuple[int, ...]]:
    """Every ``text.*`` key of the official tower and its shape."""
    w, m = t.width, t.mlp_width
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (t.vocab_size, w),
                                          "positional_embedding": (t.context_length, w)}
    for i in range(t.layers):
        block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w),
                 "attn.in_proj_bias": (3 * w,), "attn.out_proj.weight": (w, w),
                 "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
                 "mlp.c_fc.weight": (m, w), "mlp.c_fc.bias": (m,), "mlp.c_proj.weight": (w, m),
                 "mlp.c_proj.bias": (w,)}
        shapes.update({f"transformer.resblocks.{i}.{k}": s for k, s in block.items()})
    shapes.update({"ln_final.weight": (w,), "ln_final.bias": (w,),
                   "text_projection": (w, t.output_dim)})
    return {f"text.{k}": s for k, s in shapes.items()}


def official_keys(depth: int, layers: int) -> list[str]:
    """The official ``uta_clip.CLIP`` state-dict keys for ``depth`` visual blocks and ``layers``
    text blocks (the sizes do not change the names)."""
    visual = VisualShape(patch=1, dim=1, grid=1, depth=depth, heads=1, hidden=1, out_dim=1)
    text = TextShape(1, 1, 1, 1, layers, 1, 1)
    return [*visual_shapes(visual), *text_shapes(text), "logit_scale"]


def _count(state: Mapping[str, Any], pattern: re.Pattern[str]) -> int:
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _layout_hint(keys: set[str]) -> str:
    if any(".attn.inner_attn_ln." in k for k in keys):
        return ("; attn.inner_attn_ln is EVA-CLIP's layout, not UTA's (its eva_vit.py has no "
                "attention sub-LN)")
    if any(k.startswith("visual.trunk.") for k in keys):
        return "; this is an open_clip model with a timm tower, not the official UTA CLIP"
    if not any(k.startswith(("visual.", "text.")) for k in keys):
        return "; expected the official uta_clip.CLIP state dict (visual.*, text.*, logit_scale)"
    return ""


def check_keys(state: Mapping[str, Any], where: str | Path) -> tuple[int, int]:
    """(visual depth, text layers) of a state dict with exactly the official keys; a one-line
    UserError naming the first missing and unknown keys otherwise."""
    depth, layers = _count(state, _BLOCK), _count(state, _LAYER)
    expected = official_keys(max(depth, 1), max(layers, 1))
    missing = [k for k in expected if k not in state]
    unknown = sorted(str(k) for k in set(state) - set(expected))
    if missing or unknown:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unknown {_names(unknown)}"] if unknown else [])
        raise UserError(f"{where}: not the official UTA checkpoint layout: {'; '.join(parts)}"
                        f"{_layout_hint(set(state))}")
    not_tensors = [k for k in expected if not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        raise UserError(f"{where}: {_names(not_tensors)} should be tensors")
    return depth, layers


# --- reading and inferring -------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """An official checkpoint's state dict, loaded with ``weights_only=True`` (never unpickling
    code); ``{"model"|"state_dict"|"module": ...}`` wrappers are unwrapped and a DDP ``module.``
    prefix on every key is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"official UTA checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
            AttributeError, ImportError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a weights-only torch checkpoint ({first}); refusing to "
                        "unpickle it") from None
    while isinstance(state, Mapping):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
    if state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def text_heads(width: int, heads: int | None = None) -> int:
    """The text tower's heads: ``heads`` when given, else ``width // 64`` (16 for the released
    1024-wide tower); a UserError when it does not divide the width."""
    if heads is None:
        if width % TEXT_HEAD_DIM:
            raise UserError(f"the text tower is {width} wide, not a multiple of {TEXT_HEAD_DIM}: "
                            "give its number of heads (--text-heads)")
        return width // TEXT_HEAD_DIM
    if heads < 1 or width % heads:
        raise UserError(f"--text-heads {heads} does not divide the text width {width}")
    return heads


def infer_shapes(state: Mapping[str, torch.Tensor], where: str | Path,
                 heads: int | None = None) -> tuple[VisualShape, TextShape]:
    """The towers' sizes from the tensors (keys already checked), then every tensor's shape
    checked against them: one line naming the first that does not fit."""
    depth, layers = check_keys(state, where)
    patch_w, pos, rope = (state[f"visual.{k}"] for k in
                          ("patch_embed.proj.weight", "pos_embed", "rope.freqs_cos"))
    if patch_w.ndim != 4 or pos.ndim != 3 or rope.ndim != 2 or patch_w.shape[1] != 3:
        raise UserError(f"{where}: visual.patch_embed.proj.weight {tuple(patch_w.shape)}, "
                        f"pos_embed {tuple(pos.shape)}, rope.freqs_cos {tuple(rope.shape)}: not "
                        "an RGB patch embedding, a position table and a RoPE table")
    dim, patch, head_dim = patch_w.shape[0], patch_w.shape[2], rope.shape[1]
    grid = isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1 or grid < 1:
        raise UserError(f"{where}: visual.pos_embed {tuple(pos.shape)} is not CLS + a square grid")
    if head_dim < 4 or head_dim % 4 or dim % head_dim:
        raise UserError(f"{where}: visual.rope.freqs_cos {tuple(rope.shape)} gives a head width "
                        f"{head_dim} that does not divide dim {dim} in a multiple of 4")
    w1, head = state["visual.blocks.0.mlp.w1.weight"], state["visual.head.weight"]
    embedding, text_proj = state["text.token_embedding.weight"], state["text.text_projection"]
    fc = state["text.transformer.resblocks.0.mlp.c_fc.weight"]
    if any(t.ndim != 2 for t in (w1, head, embedding, text_proj, fc)):
        raise UserError(f"{where}: mlp.w1, head, token_embedding, text_projection and c_fc "
                        "weights must be matrices")
    visual = VisualShape(patch=patch, dim=dim, grid=grid, depth=depth, heads=dim // head_dim,
                         hidden=w1.shape[0], out_dim=head.shape[0])
    width = embedding.shape[1]
    text = TextShape(context_length=state["text.positional_embedding"].shape[0],
                     vocab_size=embedding.shape[0], width=width,
                     heads=text_heads(width, heads), layers=layers, mlp_width=fc.shape[0],
                     output_dim=text_proj.shape[1])
    expected = {**visual_shapes(visual), **text_shapes(text), "logit_scale": None}
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if shape is None:
            if state[key].numel() != 1:
                raise UserError(f"{where}: logit_scale has shape {got}, expected a scalar")
        elif got != shape:
            raise UserError(f"{where}: {key} is {got}, expected {shape} for a {dim}-wide "
                            f"{depth}-block ViT/{patch} at {visual.img_size} px and a "
                            f"{width}-wide {layers}-layer text tower; shapes of no known config")
    if visual.out_dim != text.output_dim:
        raise UserError(f"{where}: the image head maps to {visual.out_dim}-d and the text "
                        f"projection to {text.output_dim}-d; they must share the joint space")
    if text.vocab_size != VOCAB:
        raise UserError(f"{where}: a {text.vocab_size}-token text vocabulary; the official "
                        f"tokenizer (open_clip.tokenize) has {VOCAB}")
    return visual, text


# --- the student ----------------------------------------------------------------------------

def student_config(visual: VisualShape, name: str | None = None) -> tuple[dict[str, Any], str]:
    """(StudentConfig fields, release label) for the official visual tower: timm's model (the
    release's, or ``name``) with every size overridden; an MLP ratio only where timm's
    ``int(dim * 8 / 3)`` is not the checkpoint's width (UTA-g), chosen so that timm's int()
    gives exactly it."""
    key = (visual.patch, visual.dim, visual.depth, visual.heads, visual.hidden)
    release, default = RELEASES.get(key, ("", OTHER_SIZES))
    config: dict[str, Any] = {"name": name or default, "out_dim": visual.out_dim,
                              "img_size": visual.img_size, "patch_size": visual.patch,
                              "dim": visual.dim, "depth": visual.depth, "heads": visual.heads}
    if int(visual.dim * TIMM_RATIO) != visual.hidden:
        config["mlp_ratio"] = (visual.hidden + 0.5) / visual.dim
    return config, release


def _timm_key(key: str) -> str:
    key = key[len("visual."):]
    for old, new in VISUAL_RENAMES:
        key = key.replace(old, new)
    return key


def student_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's state dict (``trunk.*`` in timm's names, ``head.*``) of the official
    ``visual.*`` tensors, as float32; the RoPE buffers are left out (timm computes them)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("visual.") or ".rope." in key:
            continue
        name = key[len("visual."):] if key.startswith("visual.head.") else f"trunk.{_timm_key(key)}"
        out[name] = value.detach().to(torch.float32).contiguous()
    return out


def build_student(state: Mapping[str, torch.Tensor], visual: VisualShape, where: str | Path,
                  name: str | None = None) -> tuple[UTAStudent, str]:
    """The timm student holding the official visual tower (eval mode), and its release label."""
    config, release = student_config(visual, name)
    try:
        student = UTAStudent(StudentConfig(**config))
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None
    tensors = student_tensors(state)
    own = student.state_dict()
    missing, unknown = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unknown or wrong:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unknown)}"] if unknown else []) + (
            [f"shape of {_names(wrong)}"] if wrong else [])
        raise UserError(f"{where}: the visual tower does not fit timm's {config['name']} "
                        f"({'; '.join(parts)}); pass another --name or none")
    student.load_state_dict(tensors)
    check_rope(state, student, where)
    return student.eval(), release


def check_rope(state: Mapping[str, torch.Tensor], student: UTAStudent,
               where: str | Path) -> None:
    """The checkpoint's RoPE buffers (every copy) equal timm's cos / sin for the student's grid:
    the same reference grid, frequencies and interleaving."""
    embed = student.trunk.rope.get_embed().float()  # N x 2 head_dim: sin, cos
    sin, cos = embed.tensor_split(2, dim=-1)
    for key, value in state.items():
        if ".rope.freqs_" not in key:
            continue
        ours = cos if key.endswith("cos") else sin
        if not torch.allclose(value.float(), ours, atol=1e-4):
            grid = student.config.grid[0]
            raise UserError(f"{where}: {key} is not timm's RoPE for a {grid} x {grid} grid with "
                            "reference grid 16 (eva_vit.py's pt_hw_seq_len=16, intp_freq=True)")


# --- the text tower -------------------------------------------------------------------------

def _mlp_ratio(width: int, mlp_width: int) -> float:
    """A ratio for which ``int(width * ratio) == mlp_width`` (open_clip's rounding)."""
    ratio = mlp_width / width
    return ratio if int(width * ratio) == mlp_width else (mlp_width + 0.5) / width


class UTAText(nn.Module):
    """The official text tower as open_clip's ``TextTransformer`` (``self.text``) plus the
    CLIP's ``logit_scale``: its state dict has the official key names."""

    def __init__(self, shape: TextShape, logit_scale: float = 0.0) -> None:
        from open_clip.transformer import TextTransformer

        super().__init__()
        self.shape = shape
        self.text = TextTransformer(
            context_length=shape.context_length, vocab_size=shape.vocab_size,
            width=shape.width, heads=shape.heads, layers=shape.layers,
            mlp_ratio=_mlp_ratio(shape.width, shape.mlp_width), output_dim=shape.output_dim,
            act_layer=nn.GELU, pool_type="argmax")
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    @property
    def output_dim(self) -> int:
        return self.shape.output_dim

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """The official tokenizer: ``open_clip.tokenize`` at the tower's context length."""
        from open_clip import tokenize

        return tokenize(texts, context_length=self.shape.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x context token ids -> B x output_dim (the official ``encode_text``)."""
        return self.text(tokens)


def official_preprocess(size: int) -> Preprocess:
    """imagenet_zeroshot_eval.py's transform: Resize(size, bicubic) of the shortest edge,
    CenterCrop(size), OpenAI CLIP mean / std."""
    return Preprocess(size=size, mean=CLIP_MEAN, std=CLIP_STD,
                      interpolation="bicubic", resize="shortest", resize_size=size, crop=size)


def save_text_tower(folder: Path, state: Mapping[str, torch.Tensor], shape: TextShape,
                    preprocess: Preprocess, source: dict[str, Any]) -> None:
    """Write text.safetensors (the official ``text.*`` + ``logit_scale``, float32) and
    text.json (the sizes, the image preprocessing, where they came from)."""
    tensors = {k: v.detach().to(torch.float32).reshape(() if k == "logit_scale" else v.shape)
               for k, v in state.items() if k.startswith("text.") or k == "logit_scale"}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / TEXT_WEIGHTS, save_tensors(tensors))
    record = {"format": TEXT_FORMAT, **{f.name: getattr(shape, f.name) for f in fields(shape)},
              "tokenizer": "open_clip.tokenize", "preprocess": preprocess.to_dict(),
              "source": source}
    atomic_write_json(folder / TEXT_CONFIG, record)


def load_text_tower(folder: str | Path) -> tuple[UTAText, Preprocess, str]:
    """(text tower in eval mode, the image preprocessing, identity) of a folder written by
    ``save_text_tower``; the identity is the weights' sha256, wherever the folder lies."""
    folder = Path(folder)
    if not (folder / TEXT_CONFIG).is_file() or not (folder / TEXT_WEIGHTS).is_file():
        raise UserError(f"{folder}: no imported UTA text tower ({TEXT_CONFIG} and "
                        f"{TEXT_WEIGHTS}, written by `vlalign import-uta`)")
    record = read_json(folder / TEXT_CONFIG)
    if record.get("format") != TEXT_FORMAT:
        raise UserError(f"{folder / TEXT_CONFIG}: not a {TEXT_FORMAT} record")
    shape = TextShape(**{f.name: int(record[f.name]) for f in fields(TextShape)})
    model = UTAText(shape)
    tensors = load_tensors(folder / TEXT_WEIGHTS)
    expected = set(model.state_dict())
    if set(tensors) != expected:
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserError(f"{folder / TEXT_WEIGHTS}: not the text tower {TEXT_CONFIG} describes "
                        f"(missing {_names(missing) or 'none'}; "
                        f"unknown {_names(unknown) or 'none'})")
    model.load_state_dict(tensors)
    identity = f"uta-text#{sha256_file(folder / TEXT_WEIGHTS)[:16]}"
    return model.eval().requires_grad_(False), Preprocess.from_dict(record["preprocess"]), identity


def copy_text_tower(source: Path, folder: Path) -> None:
    """Copy text.json + text.safetensors from ``source`` into ``folder`` (atomically, each)."""
    folder.mkdir(parents=True, exist_ok=True)
    if folder.resolve() == source.resolve():
        return
    for name in (TEXT_WEIGHTS, TEXT_CONFIG):
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(source / name, tmp)


# --- the import ------------------------------------------------------------------------------

def import_official(checkpoint: str | Path, out: str | Path, name: str | None = None,
                    heads: int | None = None) -> Path:
    """Turn an official UTA checkpoint into a vlalign UTA model folder at ``out`` that
    ``vlalign.load_model(out)`` opens: the student (timm EVA-02 + head) and the text tower
    (``uta-text:.``). ``name``: the timm model of the student (default: by the shapes);
    ``heads``: the text tower's heads (default ``width // 64``)."""
    from vlalign.uta.teachers import UTATextTeacher

    out = Path(out)
    if (out / CONFIG).exists():
        raise UserError(f"{out} already holds a model ({CONFIG}); choose another --out")
    state = read_checkpoint(checkpoint)
    visual, text = infer_shapes(state, checkpoint, heads)
    student, release = build_student(state, visual, checkpoint, name)
    source = {"layout": "jihaonew/UTA uta_clip.CLIP", "file": Path(checkpoint).name,
              "release": release or None}
    save_text_tower(out, state, text, official_preprocess(visual.img_size), source)
    teacher = UTATextTeacher(out)
    save_student(out, student, teacher, TEXT_SPEC, {"imported": source})
    log.info("imported %s (%s): student %s, text tower %d x %d", checkpoint,
             release or "not a released size", student.config.name, text.layers, text.width)
    return out
