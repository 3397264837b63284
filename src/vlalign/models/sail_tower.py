"""SAIL as the vision tower of a LLaVA-style multimodal LLM (DESIGN 1.2, "As an MLLM tower").

The official ``llava_train`` code runs DINOv2, takes its last hidden state per patch as
``[CLS ; patch]`` (``ImageEmbedding(..., patch_mode=True)``), maps every token through the
alignment layer's LayerNorm + GLU vision head *without* L2 normalisation, and feeds the result to
LLaVA's projector (``mm_hidden_size`` = the head's output dim). ``SAILVisionTower`` is that, for a
vlalign model, behind the interface LLaVA's ``CLIPVisionTower`` offers: ``forward(images)`` ->
B x N x ``hidden_size``, ``num_patches``, ``num_patches_per_side``, ``image_processor``
(``preprocess(images, return_tensors="pt")["pixel_values"]``, ``image_mean``, ``crop_size``),
``config``, ``dummy_feature``, ``dtype``, ``device``.

The head's parameters are the tower's parameters and get gradients. The backbone stays frozen
and outside the autograd graph (it runs under inference mode, in float32, on the tower's device)
unless ``tune_backbone=True``, which registers a transformers backbone's module as the tower's
``backbone`` (trainable, cast with the tower) and runs it with gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image
from torch import nn

from vlalign.backbones.base import Preprocess, VisionEncoder, VisionOutput, image_to_tensor
from vlalign.errors import UserError
from vlalign.models.sail import VLModel
from vlalign.sail.artifact import AlignmentHeads, load_vision_backbone, token_head_inputs

Pixels = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


class TowerImageProcessor:
    """The part of a transformers image processor LLaVA's data code uses, doing the vision
    backbone's own vlalign preprocessing (what the heads were trained on)."""

    def __init__(self, recipe: Preprocess) -> None:
        self.recipe = recipe
        self.image_mean, self.image_std = list(recipe.mean), list(recipe.std)
        self.crop_size = {"height": recipe.size, "width": recipe.size}

    def preprocess(self, images: Image.Image | Sequence[Image.Image],
                   return_tensors: str | None = "pt") -> dict[str, torch.Tensor]:
        """{"pixel_values": B x 3 x S x S} for one PIL image or several."""
        if return_tensors not in (None, "pt"):
            raise UserError(f"return_tensors={return_tensors!r}: only 'pt' (torch) is supported")
        images = [images] if isinstance(images, Image.Image) else list(images)
        return {"pixel_values": torch.stack([image_to_tensor(im, self.recipe) for im in images])}

    __call__ = preprocess


class SAILVisionTower(nn.Module):
    """Images -> per-token SAIL vision-head outputs B x N x ``hidden_size`` (unnormalised).

    Token i is ``head([CLS ; patch_i])`` for ViT backbones (the official tower), ``head(token_i)``
    for CNN maps; N = ``num_patches`` at the backbone's input size. Equal to
    ``VLModel.encode_image_tokens(images, normalize=False)``, but differentiable.
    """

    is_loaded = True

    def __init__(self, vision: VisionEncoder, head: nn.Module, tune_backbone: bool = False):
        super().__init__()
        self.vision, self.head, self.tune_backbone = vision, head, tune_backbone
        if tune_backbone:
            from vlalign.backbones.hf import HFVisionEncoder

            if not isinstance(vision, HFVisionEncoder):
                raise UserError("tune_backbone=True needs a transformers (hf:) vision backbone; "
                                f"this one is {vision.identity}")
            self.backbone = vision.model.requires_grad_(True)  # a submodule: trained and cast
        side = vision.preprocess.size
        probe = vision.encode(torch.zeros(1, 3, side, side), tokens=True)
        if probe.tokens is None or probe.grid is None:
            raise UserError(f"{vision.identity} has no token map; an MLLM tower needs one")
        token_head_inputs(probe)  # a UserError now if the tokens cannot feed the head
        self.grid: tuple[int, int] = tuple(probe.grid)
        self.image_processor = TowerImageProcessor(vision.preprocess)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu",
                        tune_backbone: bool = False) -> SAILVisionTower:
        """The tower of a vlalign SAIL model folder (a run, a saved or an imported official
        model): its vision backbone and vision head; the text side is not loaded."""
        heads = AlignmentHeads.from_pretrained(path)
        vision = load_vision_backbone(heads.config, device, path)
        return cls(vision, heads.vision_head, tune_backbone).to(device)

    @classmethod
    def from_model(cls, model: VLModel, tune_backbone: bool = False) -> SAILVisionTower:
        """The tower of a loaded SAIL model (sharing its backbone and vision head)."""
        return cls(model.vision, model.heads.vision_head, tune_backbone)

    # --- what LLaVA reads ------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """Per-token output dim: the vision head's (LLaVA's ``mm_hidden_size``)."""
        return int(self.head.config["out_dim"])

    @property
    def num_patches_per_side(self) -> int:
        return self.grid[0]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def config(self) -> SimpleNamespace:
        size = self.vision.preprocess.size
        return SimpleNamespace(image_size=size, patch_size=size // self.grid[0],
                               hidden_size=self.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """The head's dtype: the outputs' dtype."""
        return next((p.dtype for p in self.head.parameters()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.head.parameters()), torch.device("cpu"))

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    def to(self, *args: Any, **kwargs: Any) -> SAILVisionTower:
        """Move (and cast) the head, and move the frozen backbone with it (it stays float32)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.vision.to(device)
        return super().to(*args, **kwargs)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, images: Pixels) -> torch.Tensor | list[torch.Tensor]:
        """Preprocessed pixels B x 3 x H x W (or ``{"pixel_values": ...}``, as the official
        tower takes them) -> B x N x hidden_size; a list of 3 x H x W images -> a list of
        1 x N x hidden_size, one per image (as LLaVA's towers do)."""
        if isinstance(images, Mapping):
            images = images["pixel_values"]
        if not isinstance(images, torch.Tensor):
            return [self.forward(image.unsqueeze(0)) for image in images]
        tokens = token_head_inputs(self.features(images))  # B x N x D_in
        return self.head(tokens.to(self.device, self.dtype))  # B x N x hidden_size

    def features(self, pixels: torch.Tensor) -> VisionOutput:
        """The backbone's output: frozen (no graph, float32) unless ``tune_backbone``."""
        if not self.tune_backbone:
            return self.vision.encode(pixels, tokens=True)
        return self.vision.forward_features(pixels)  # the same computation, with gradients
