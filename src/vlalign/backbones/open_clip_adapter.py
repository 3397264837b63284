"""open_clip adapter: both towers of a CLIP model, in its joint image-text space.

Specs: ``open_clip:<arch>/<tag>`` (a pretrained tag, from the Hub cache or downloaded),
``open_clip:<arch>/<checkpoint file>`` (e.g. ``ViT-B-32//ckpts/model.pt``), ``open_clip:<folder>``
or ``open_clip:local-dir:<folder>`` (open_clip_config.json + weights), ``open_clip:hf-hub:<repo>``,
and ``open_clip:<arch>?weights=random`` (seeded random init). Images get open_clip's own eval
transform for the model (``open_clip_preprocess``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlalign.backbones.base import (
    BaseTextEncoder,
    Preprocess,
    VisionOutput,
    folder_weights_tag,
    make_identity,
    reject_stage,
    released,
    weights_tag,
)
from vlalign.backbones.hf import hub_file, local_model_dir
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.optional import require

# seed only matters with weights=random.
OPTIONS = {"weights": Option("pretrained", ("pretrained", "random")), "seed": Option(0)}


def _tag_checkpoint(arch: str, tag: str) -> tuple[Path, dict[str, Any]]:
    """Checkpoint file for a pretrained tag (Hub cache first) and the tag's preprocessing."""
    open_clip = require("open_clip", "backbones")

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        names = (str(Path(filename).with_suffix(".safetensors")), filename)
        return hub_file(repo, names, "open_clip"), preprocess
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(cfg.get("url", ""))
    if cached.is_file():
        return cached, preprocess
    raise UserError(f"open_clip weights {arch}/{tag} are not cached in {cached.parent} and only "
                    "Hub-hosted tags are fetched; pass a checkpoint file instead")


def load_open_clip(spec: Spec, device: str) -> tuple[torch.nn.Module, Any, str]:
    """(model in eval mode, tokenizer, identity) for an open_clip spec."""
    reject_stage(spec)
    opts = validate_options(spec, OPTIONS)
    open_clip = require("open_clip", "backbones")

    random = opts["weights"] == "random"
    name, kwargs = spec.name, {}
    if name.startswith("hf-hub:"):
        name = "local-dir:" + str(local_model_dir(name[len("hf-hub:"):], "open_clip"))
    elif not name.startswith("local-dir:") and Path(name).expanduser().is_dir():
        name = "local-dir:" + str(Path(name).expanduser())
    if name.startswith("local-dir:"):
        model_name = name
        tag = None if random else folder_weights_tag(name[len("local-dir:"):])
        kwargs["load_weights"] = not random
    else:
        model_name, _, pretrained = name.partition("/")
        if model_name not in open_clip.list_models():
            known = open_clip.list_models()
            raise UserError(f"unknown open_clip architecture {model_name!r}; valid: "
                            f"{', '.join(known[:12])}, ... ({len(known)} in all, see "
                            "open_clip.list_models())")
        if random:
            tag = None
        elif not pretrained:
            raise UserError(f"spec {str(spec)!r} names no weights: use ARCH/TAG, ARCH/FILE "
                            "or ?weights=random")
        elif Path(pretrained).expanduser().is_file():
            kwargs["pretrained"] = str(Path(pretrained).expanduser())
            tag = weights_tag([kwargs["pretrained"]])
        elif pretrained in open_clip.list_pretrained_tags_by_model(model_name):
            path, kwargs["force_preprocess_cfg"] = _tag_checkpoint(model_name, pretrained)
            kwargs["pretrained"] = str(path)
            tag = weights_tag([path])
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise UserError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of "
                            f"{model_name}; tags: {', '.join(tags) or 'none'}")
    if random:
        tag = f"random-seed{opts['seed']}"
    else:
        opts.pop("seed")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts["seed"] if random else 0)
            model = open_clip.create_model(model_name, device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot create open_clip model from spec {str(spec)!r}: {err}"
                        ) from err
    return model.eval().requires_grad_(False), tokenizer, make_identity(spec, tag, opts)


def open_clip_preprocess(model: torch.nn.Module) -> Preprocess:
    """open_clip's eval transform for ``model``, as ``create_model_and_transforms`` builds it
    (``image_transform_v2(PreprocessCfg(**visual.preprocess_cfg), is_train=False)``):
    resize_mode shortest (the default) resizes the shorter edge to size and centre-crops size,
    squash resizes to size x size; bicubic unless the config says bilinear; its mean/std
    (OpenAI CLIP's by default)."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    fields = PreprocessCfg.__dataclass_fields__
    cfg = PreprocessCfg(**{k: v for k, v in get_model_preprocess_cfg(model).items()
                           if k in fields})
    height, width = (cfg.size, cfg.size) if isinstance(cfg.size, int) else cfg.size[-2:]
    if height != width or cfg.resize_mode not in ("shortest", "squash"):
        raise UserError(f"open_clip preprocessing with size {cfg.size} and resize_mode "
                        f"{cfg.resize_mode!r} is not supported (square, shortest or squash)")
    shortest = cfg.resize_mode == "shortest"
    return Preprocess(size=int(height), mean=cfg.mean, std=cfg.std,
                      interpolation="bilinear" if cfg.interpolation == "bilinear" else "bicubic",
                      resize=cfg.resize_mode, crop=int(height) if shortest else None)


class OpenCLIPVision:
    """The image tower. pooled = ``encode_image`` (joint space, not normalised). For ViT towers
    the tokens are the post-LayerNorm patch tokens times the output projection, i.e. also in the
    joint space; other towers (ResNet, timm) have no token map here."""

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        self.model, _, self.identity = load_open_clip(spec, device)
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        self.has_tokens = (isinstance(visual, VisionTransformer) and visual.attn_pool is None
                           and visual.pool_type in ("tok", "avg"))
        visual.output_tokens = self.has_tokens
        self.patch = getattr(visual, "patch_size", None)
        self.preprocess = open_clip_preprocess(self.model)
        self.device = torch.device(device)
        side = self.preprocess.size
        probe = self.encode(torch.zeros(1, 3, side, side), tokens=True)
        self.dim = probe.pooled.shape[1]
        self.token_dim = 0 if probe.tokens is None else probe.tokens.shape[2]

    def to(self, device: torch.device | str) -> OpenCLIPVision:
        """Move the model; later inputs are moved to the same device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput:
        """Pooled joint-space vectors and, for ViT towers, projected patch tokens."""
        visual = self.model.visual
        with torch.inference_mode():
            x = pixels.to(self.device, torch.float32)
            if not self.has_tokens:
                return released(VisionOutput(pooled=visual(x).float()))
            pooled, patches = visual(x)
            out = VisionOutput(pooled=pooled.float())
            if tokens:
                if visual.proj is not None:
                    patches = patches @ visual.proj
                out.tokens = patches.float()
                out.grid = (x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1])
        return released(out)


class OpenCLIPText(BaseTextEncoder):
    """The text tower: ``encode_text`` of the tokenised strings (joint space, not normalised)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, identity: str,
                 device: str = "cpu") -> None:
        self.model, self.tokenizer, self.identity = model, tokenizer, identity
        self.to(device)
        self.dim = self.encode(["probe"]).shape[1]

    @classmethod
    def from_spec(cls, spec: Spec, device: str = "cpu") -> OpenCLIPText:
        """Load the model a spec names and keep its text tower."""
        return cls(*load_open_clip(spec, device), device)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Tokenise (open_clip pads to the context length) and run ``encode_text``."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device))
