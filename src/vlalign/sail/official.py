"""The official SAIL checkpoint layout (github.com/lezhang7/SAIL), imported and exported strictly.

The released alignment layers (HF ``le723z/sail``: ``sail_dinov2l_gte.pt``, ``sail_dinov2l_nv2.pt``)
are the state dict of the official ``AlignmentLayer`` (``model/sail_model.py``) built with
``linear_type="star"``, i.e. a ``StarMLP`` (``model/linear.py``) on *both* sides. In
``state_dict()`` order (the module's own parameters first, then its children)::

    logit_scale                                (1,)  log of the scale: logits use exp(logit_scale)
    logit_bias                                 (1,)
    vision_mapping_network.f1.{weight,bias}    (W*Dv, Dv), (W*Dv,)   first input projection
    vision_mapping_network.f2.{weight,bias}    (W*Dv, Dv), (W*Dv,)   second input projection
    vision_mapping_network.g.{weight,bias}     (d, W*Dv), (d,)       output projection
    vision_layer_norm.{weight,bias}            (Dv,)
    text_mapping_network.{f1,f2,g}.{weight,bias}                     the same with Dt
    text_layer_norm.{weight,bias}              (Dt,)

The official head computes ``g(ReLU6(f1 x) * f2 x)`` on ``x = LayerNorm(features)``, which is
vlalign's ``GLUHead`` (``norm`` = the layer norm, ``w1`` = f1, ``w2`` = f2, ``w_out`` = g); the
official code also clamps f1 x and f2 x to [-1e3, 1e3], which changes nothing unless a
pre-activation exceeds 1000. vlalign keeps the scale and bias as the loss's ``loss.log_scale`` and
``loss.bias`` (shape ()), also a log scale. The official LLaVA tower loads this layout with
``strict=False``, so a wrong key would silently leave a head random: import accepts and export
writes exactly ``official_keys()``, nothing more or less.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.errors import UserError
from vlalign.sail.artifact import (
    CONFIG,
    WEIGHTS,
    AlignmentHeads,
    BackboneRecord,
    HeadsConfig,
    HeadSpec,
    build_head,
)
from vlalign.utils.checkpoint import load_tensors
from vlalign.utils.files import atomic_write_bytes, read_json

SIDES = {"vision": "vision_head", "text": "text_head"}  # official prefix -> vlalign head
LAYERS = {"mapping_network.f1": "w1", "mapping_network.f2": "w2", "mapping_network.g": "w_out",
          "layer_norm": "norm"}  # official module (after "{side}_") -> GLUHead attribute
SCALARS = {"logit_scale": "loss.log_scale", "logit_bias": "loss.bias"}
# Released checkpoints: which backbone features each head expects.
KNOWN_DIMS = "DINOv2-L [CLS ; mean patch] 2048-d, GTE-large 1024-d, NV-Embed-v2 4096-d"


def official_keys() -> list[str]:
    """The official AlignmentLayer's state-dict keys (StarMLP on both sides), in its order."""
    keys = list(SCALARS)
    for side in SIDES:
        keys += [f"{side}_{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")]
    return keys


def _vlalign_key(key: str) -> str:
    """The vlalign (heads.safetensors) name of an official key."""
    if key in SCALARS:
        return SCALARS[key]
    side, _, rest = key.partition("_")
    layer, _, param = rest.rpartition(".")
    return f"{SIDES[side]}.{LAYERS[layer]}.{param}"


KEY_MAP = {key: _vlalign_key(key) for key in official_keys()}  # official -> vlalign


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _layout_hint(keys: set[str]) -> str:
    """Why a recognisable but unsupported official layout cannot be imported."""
    if "vision_mapping_network.weight" in keys:
        return ("; this is the official linear (alignment-probing) layout, LayerNorm + "
                "Linear: import-sail reads the released 'star' layout only")
    if any(k.startswith("vision_mapping_network.proj.") for k in keys):
        return "; this is the official 'mlp' (SiglipMLP) layout, not the released 'star' one"
    if any(k.startswith("text_mapping_network.layers.") for k in keys):
        return "; this is the official ShareLock layout, not the released 'star' one"
    return ""


def check_official_keys(state: Mapping[str, Any], where: str | Path) -> None:
    """UserError naming every missing and unknown key unless ``state`` has exactly the
    official layout's keys, each a tensor."""
    expected = official_keys()
    missing = [k for k in expected if k not in state]
    unknown = sorted(str(k) for k in set(state) - set(expected))
    if missing or unknown:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unknown {_names(unknown)}"] if unknown else [])
        raise UserError(f"{where}: not the official SAIL alignment-layer layout (StarMLP heads): "
                        f"{'; '.join(parts)}{_layout_hint(set(state))}")
    not_tensors = [k for k in expected if not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        raise UserError(f"{where}: {_names(not_tensors)} should be tensors")


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """An official checkpoint's alignment-layer state dict, loaded with ``weights_only=True``
    (never unpickling code). The official trainer's ``{"epoch", "state_dict", "optimizer",
    ...}`` files are unwrapped, and a DDP ``module.`` prefix on every key is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"official SAIL checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a weights-only torch checkpoint ({first}); refusing to "
                        "unpickle it") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
    if state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    check_official_keys(state, path)
    return dict(state)


def _glu_spec(state: Mapping[str, torch.Tensor], side: str, where: str | Path) -> HeadSpec:
    """The GLU head spec an official StarMLP side describes; UserError on any shape that does
    not fit (naming the official key)."""
    norm, f1, g = (state[f"{side}_{name}.weight"] for name in
                   ("layer_norm", "mapping_network.f1", "mapping_network.g"))
    if norm.ndim != 1 or f1.ndim != 2 or g.ndim != 2:
        raise UserError(f"{where}: {side} head tensors have the wrong number of dimensions "
                        f"(layer norm {tuple(norm.shape)}, f1 {tuple(f1.shape)}, "
                        f"g {tuple(g.shape)})")
    in_dim, hidden, out_dim = norm.shape[0], f1.shape[0], g.shape[0]
    if hidden % in_dim:
        raise UserError(f"{where}: {side}_mapping_network.f1 is {tuple(f1.shape)}; its width "
                        f"is not a whole multiple of the input dim {in_dim}")
    shapes = {"layer_norm": ((in_dim,), (in_dim,)),
              "mapping_network.f1": ((hidden, in_dim), (hidden,)),
              "mapping_network.f2": ((hidden, in_dim), (hidden,)),
              "mapping_network.g": ((out_dim, hidden), (out_dim,))}
    for layer, (weight, bias) in shapes.items():
        for param, shape in (("weight", weight), ("bias", bias)):
            key = f"{side}_{layer}.{param}"
            if tuple(state[key].shape) != shape:
                raise UserError(f"{where}: {key} is {tuple(state[key].shape)}, expected {shape} "
                                f"for a {in_dim} -> {hidden} -> {out_dim} StarMLP")
    return {"kind": "glu", "in_dim": in_dim, "out_dim": out_dim, "width_factor": hidden // in_dim}


def from_official(state: Mapping[str, torch.Tensor], where: str | Path = "checkpoint"
                  ) -> tuple[HeadSpec, HeadSpec, dict[str, torch.Tensor]]:
    """(vision head spec, text head spec, vlalign tensors) of an official state dict: the
    heads' ``vision_head.*`` / ``text_head.*`` and the loss's ``loss.log_scale`` /
    ``loss.bias``, as float32."""
    check_official_keys(state, where)
    vision, text = (_glu_spec(state, side, where) for side in SIDES)
    if vision["out_dim"] != text["out_dim"]:
        raise UserError(f"{where}: the vision head maps to {vision['out_dim']}-d and the text "
                        f"head to {text['out_dim']}-d; they must share the joint space")
    for key in SCALARS:
        if state[key].numel() != 1:
            raise UserError(f"{where}: {key} has shape {tuple(state[key].shape)}, expected (1,)")
    tensors = {KEY_MAP[k]: v.detach().to(torch.float32).reshape(() if k in SCALARS else v.shape)
               .contiguous() for k, v in state.items()}
    return vision, text, tensors


def to_official(tensors: Mapping[str, torch.Tensor], where: str | Path = "model"
                ) -> dict[str, torch.Tensor]:
    """The official state dict (exactly ``official_keys()``, in order) of vlalign GLU heads'
    tensors plus the loss's ``loss.log_scale`` (and ``loss.bias``; 0 for InfoNCE, which has
    none: the softmax ignores a constant)."""
    heads = {k for k in tensors if k.startswith(tuple(f"{h}." for h in SIDES.values()))}
    expected = {v for k, v in KEY_MAP.items() if k not in SCALARS}
    if heads != expected:
        parts = [f"missing {_names(sorted(expected - heads))}"] if expected - heads else []
        parts += [f"unknown {_names(sorted(heads - expected))}"] if heads - expected else []
        raise UserError(f"{where}: head tensors do not match GLU heads ({'; '.join(parts)})")
    if "loss.log_scale" not in tensors:
        raise UserError(f"{where}: no loss.log_scale (the logit scale) in {WEIGHTS}; the official "
                        "layout needs it. Export a training run directory (its heads keep the "
                        "loss's scale and bias)")
    values = dict(tensors)
    values.setdefault("loss.bias", torch.zeros((), dtype=values["loss.log_scale"].dtype))
    return {k: values[v].detach().reshape(1) if k in SCALARS else values[v].detach()
            for k, v in KEY_MAP.items()}


def import_official(checkpoint: str | Path, vision_spec: str, text_spec: str, out: str | Path,
                    device: str = "cpu") -> Path:
    """Turn an official alignment-layer checkpoint into a vlalign model folder at ``out`` that
    ``vlalign.load_model(out)`` opens: the heads, the logit scale and bias, and the backbone
    specs with their identities (the backbones are built once here to check their output
    dims against the heads' input dims)."""
    out = Path(out)
    if (out / CONFIG).exists():
        raise UserError(f"{out} already holds a model ({CONFIG}); choose another --out")
    vision_head, text_head, tensors = from_official(read_official(checkpoint), checkpoint)
    vision = create_vision_encoder(vision_spec, device=device)
    text = create_text_encoder(text_spec, device=device)
    for side, spec, encoder, head in (("vision", vision_spec, vision, vision_head),
                                      ("text", text_spec, text, text_head)):
        if encoder.dim != head["in_dim"]:
            raise UserError(f"{checkpoint}: its {side} head takes {head['in_dim']}-d features, "
                            f"but {spec} gives {encoder.dim}-d (the released checkpoints: "
                            f"{KNOWN_DIMS})")
    config = HeadsConfig(
        vision_head=vision_head, text_head=text_head,
        vision=BackboneRecord(vision_spec, vision.identity, vision.dim,
                              vision.preprocess.to_dict()),
        text=BackboneRecord(text_spec, text.identity, text.dim), method="sail",
        embed_dim=vision_head["out_dim"], loss="sigmoid")
    modules = []
    for spec, prefix in ((vision_head, "vision_head."), (text_head, "text_head.")):
        head = build_head(spec)
        head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                              if k.startswith(prefix)})
        modules.append(head.eval())
    heads = AlignmentHeads(modules[0], modules[1], config)
    heads.save_pretrained(out, extra={k: v for k, v in tensors.items() if k.startswith("loss.")})
    return out


def export_official(run: str | Path, out: str | Path) -> Path:
    """Write a vlalign SAIL model (a training run or a saved model folder with GLU heads on both
    sides) as an official alignment-layer state dict (``torch.save``; loads with
    ``weights_only=True`` and ``AlignmentLayer.load_state_dict(strict=True)``)."""
    run, out = Path(run), Path(out)
    if not (run / CONFIG).exists() or not (run / WEIGHTS).exists():
        raise UserError(f"{run} is not a vlalign SAIL model: expected {CONFIG} and {WEIGHTS}")
    config = HeadsConfig.from_dict(read_json(run / CONFIG))
    kinds = (config.vision_head["kind"], config.text_head["kind"])
    if kinds != ("glu", "glu"):
        raise UserError(f"{run}: the official layout holds StarMLP (glu) heads on both sides; "
                        f"this model has {kinds[0]} (vision) and {kinds[1]} (text) heads")
    state = to_official(load_tensors(run / WEIGHTS), run)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out
