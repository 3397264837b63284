"""timm adapter: ``timm:<name[.tag]>``, ``timm:<folder>`` (saved by timm's save_for_hf),
``timm:local-dir:<folder>`` or ``timm:hf-hub:<repo>``; ``?weights=random`` builds a seeded
random-init model by name with no files at all. Images get timm's own eval transform for the
model (resolved data config: resize by crop_pct, centre crop, interpolation, mean/std)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vlalign.backbones.base import (
    RESAMPLE,
    Preprocess,
    VisionOutput,
    feature_map_to_tokens,
    folder_weights_tag,
    make_identity,
    pool_feature_map,
    pool_vit_tokens,
    reject_stage,
    released,
)
from vlalign.backbones.hf import local_model_dir
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.optional import require

POOLS = ("auto", "clsmean", "cls", "mean", "avg", "max", "avgmax", "model")
# size=0: the model's own input size; size=N builds the model for N x N inputs (the crop; the
# resize before it is floor(N / crop_pct), as timm does). seed only matters with weights=random.
DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT, used when a config has none
OPTIONS = {"pool": Option("auto", POOLS), "weights": Option("pretrained", ("pretrained", "random")),
           "seed": Option(0), "size": Option(0, minimum=0)}


def timm_preprocess(config: dict[str, Any]) -> Preprocess:
    """timm's eval transform (``create_transform(**config)``, i.e. ``transforms_imagenet_eval``)
    for a resolved data config: the shorter edge (``crop_mode`` center; both edges for squash)
    to floor(side / crop_pct), a centre crop of side, the config's interpolation and mean/std."""
    _, height, width = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if height != width or mode not in ("center", "squash"):
        raise UserError(f"timm eval transform with input {height}x{width} and crop_mode {mode!r}"
                        " is not supported (square inputs, crop_mode center or squash only)")
    scale = math.floor(height / (config.get("crop_pct") or DEFAULT_CROP_PCT))
    interpolation = config.get("interpolation") or "bilinear"
    return Preprocess(size=height, mean=tuple(config["mean"]), std=tuple(config["std"]),
                      interpolation=interpolation if interpolation in RESAMPLE else "bicubic",
                      resize="shortest" if mode == "center" else "squash",
                      resize_size=scale if mode == "center" else (scale, scale), crop=height)


def _resolve(spec: Spec, random: bool) -> tuple[str, str | None]:
    """(name for timm.create_model, folder whose files identify the weights or None)."""
    timm = require("timm", "backbones")

    name = spec.name
    if name.startswith("local-dir:"):
        name = name[len("local-dir:"):]
    if name.startswith("hf-hub:"):
        name = str(local_model_dir(name[len("hf-hub:"):], "timm"))
    elif Path(name).expanduser().exists() or "/" in name:
        if not Path(name).expanduser().is_dir():
            raise UserError(f"timm model folder {name!r} is not a folder")
    else:
        arch = name.split(".", 1)[0]
        if not timm.is_model(arch):
            raise UserError(f"unknown timm model {arch!r} (see timm.list_models())")
        if random:
            return name, None
        hub_id = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(hub_id, "hf_hub_id", None)
        if not hub_id:
            raise UserError(f"timm model {name!r} has no Hub-hosted weights; save them with "
                            "timm.models.save_for_hf and pass the folder")
        name = str(local_model_dir(hub_id, "timm"))
    folder = str(Path(name).expanduser().resolve())
    return f"local-dir:{folder}", folder


class TimmVisionEncoder:
    """A timm image model. ViTs (any model with a class token): ``[CLS ; mean(patches)]`` of
    ``forward_features`` by default, prefix/register tokens dropped from the token map. CNNs:
    average of the final map by default. ``pool=model`` uses timm's own pre-logits vector."""

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, OPTIONS)
        timm = require("timm", "backbones")

        random = opts["weights"] == "random"
        name, folder = _resolve(spec, random)
        kwargs = {"img_size": opts["size"]} if opts["size"] else {}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(opts["seed"])
                self.model = timm.create_model(name, pretrained=not random, num_classes=0,
                                               **kwargs)
        except (RuntimeError, OSError, ValueError, TypeError) as err:
            raise UserError(f"cannot create timm model from spec {str(spec)!r}: {err}"
                            ) from err
        self.model.eval().requires_grad_(False)
        if random:
            tag = f"random-seed{opts['seed']}"
        else:
            opts.pop("seed")
            tag = folder_weights_tag(folder)
        self.identity = make_identity(spec, tag, opts)
        # A ViT's built image size wins over a data config left stale by a model_args override;
        # crop_pct, interpolation and mean/std stay the checkpoint's.
        built = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        side = (opts["size"],) * 2 if opts["size"] else built
        args = {"input_size": (3, *side)} if side else {}
        self.preprocess = timm_preprocess(timm.data.resolve_data_config(args, model=self.model))
        self.has_cls = getattr(self.model, "cls_token", None) is not None
        self.num_prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        self.pool = opts["pool"]
        self.to(device)
        size = self.preprocess.size
        probe = self.encode(torch.zeros(1, 3, size, size), tokens=True)
        self.dim = probe.pooled.shape[1]
        self.token_dim = probe.tokens.shape[2]

    def to(self, device: torch.device | str) -> TimmVisionEncoder:
        """Move the model; later inputs are moved to the same device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput:
        """Pooled vectors (and tokens on their grid) for a preprocessed batch."""
        with torch.inference_mode():
            x = pixels.to(self.device, torch.float32)
            feats = self.model.forward_features(x)
            out = self._pool(feats, x.shape[-2:])
            if not tokens:
                out.tokens = out.grid = out.cls = None
        return released(out)

    def _pool(self, feats: torch.Tensor, hw: torch.Size) -> VisionOutput:
        if feats.ndim == 4:
            return self._pool_map(feats)
        if self.pool in ("avg", "max", "avgmax"):
            raise UserError(f"pool={self.pool} is for CNN maps; use clsmean, cls, mean or model")
        pool = self.pool if self.pool != "auto" else ("clsmean" if self.has_cls else "model")
        if pool in ("clsmean", "cls") and not self.has_cls:
            raise UserError(f"pool={pool} needs a class token, which this timm model lacks")
        hidden = feats.float()
        if self.num_prefix:
            out = pool_vit_tokens(hidden, self.num_prefix)
        else:
            out = VisionOutput(pooled=hidden.mean(dim=1), tokens=hidden)
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if patch is not None and (hw[0] // patch[0]) * (hw[1] // patch[1]) == out.tokens.shape[1]:
            out.grid = (hw[0] // patch[0], hw[1] // patch[1])
        if pool == "cls":
            out.pooled = out.cls
        elif pool == "mean":
            out.pooled = out.tokens.mean(dim=1)
        elif pool == "model":
            out.pooled = self.model.forward_head(feats, pre_logits=True).float()
        return out

    def _pool_map(self, feats: torch.Tensor) -> VisionOutput:
        if self.pool in ("clsmean", "cls", "mean"):
            raise UserError(f"pool={self.pool} is for ViTs; use avg, max, avgmax or model")
        nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        fmap = (feats.permute(0, 3, 1, 2) if nhwc else feats).float()
        if self.pool == "model":
            pooled = self.model.forward_head(feats, pre_logits=True).float()
        else:
            pooled = pool_feature_map(fmap, "avg" if self.pool == "auto" else self.pool)
        tokens, grid = feature_map_to_tokens(fmap)
        return VisionOutput(pooled=pooled, tokens=tokens, grid=grid)
