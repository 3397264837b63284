"""The SAIL model: frozen vision and text backbones followed by trained alignment heads, with the
logit scale and bias the heads were trained with (``loss.log_scale`` / ``loss.bias`` in
heads.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.backbones.base import Preprocess, TextEncoder, VisionEncoder
from vlalign.errors import UserError
from vlalign.models.base import CLIPLikeModel, joint_space_logits
from vlalign.models.hub import maybe_push
from vlalign.sail.artifact import (
    WEIGHTS,
    AlignmentHeads,
    BackboneRecord,
    HeadsConfig,
    load_backbones,
    token_head_inputs,
)
from vlalign.utils.checkpoint import load_tensors

SCALE_KEY, BIAS_KEY = "loss.log_scale", "loss.bias"  # the training loss's state, as saved


def trained_logits(path: str | Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(log scale, bias) saved with a SAIL model's heads; None for what it lacks (InfoNCE has
    no bias; heads saved without their loss have neither)."""
    tensors = load_tensors(Path(path) / WEIGHTS)
    return tensors.get(SCALE_KEY), tensors.get(BIAS_KEY)


class VLModel(CLIPLikeModel):
    """A CLIP-like model: frozen vision and text encoders followed by alignment heads.

    ``logit_scale`` (log of the scale) and ``logit_bias`` are the trained loss's when given (as
    ``from_pretrained`` does), else log 100 and no bias. The heads, scale and bias are the
    parameters (``.to(dtype)`` casts them); the backbones are not submodules: ``.to(device)``
    moves them too, and they stay float32, run without grad and are not in ``state_dict``.
    """

    def __init__(self, vision: VisionEncoder, text: TextEncoder, heads: AlignmentHeads,
                 logit_scale: torch.Tensor | float | None = None,
                 logit_bias: torch.Tensor | float | None = None) -> None:
        super().__init__()
        self.vision, self.text, self.heads = vision, text, heads
        device = next((p.device for p in heads.parameters()), None)
        self._init_logits(logit_scale, logit_bias,
                          device or getattr(vision, "device", torch.device("cpu")))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VLModel:
        """Load a training run directory or a saved model folder, rebuilding the backbones."""
        heads = AlignmentHeads.from_pretrained(path)
        vision, text = load_backbones(heads.config, str(device), path)
        return cls(vision, text, heads, *trained_logits(path)).to(device)

    @classmethod
    def from_backbones(cls, vision_spec: str, text_spec: str,
                       device: str | torch.device = "cpu") -> VLModel:
        """Two towers already in one joint space (e.g. an open_clip CLIP), with identity heads
        and the CLIP's own logit scale and bias when it has them."""
        vision = create_vision_encoder(vision_spec, device=str(device))
        text = create_text_encoder(text_spec, device=str(device))
        if vision.dim != text.dim:
            raise UserError(f"{vision_spec} ({vision.dim}-d) and {text_spec} ({text.dim}-d) do not "
                            "share an embedding space; train heads with `vlalign train sail`")
        dim = vision.dim
        identity = {"kind": "identity", "in_dim": dim, "out_dim": dim}
        config = HeadsConfig(vision_head=identity, text_head=dict(identity),
                             vision=BackboneRecord(vision_spec, vision.identity, dim),
                             text=BackboneRecord(text_spec, text.identity, dim), method=None,
                             embed_dim=dim)
        return cls(vision, text, AlignmentHeads.from_config(config), *joint_space_logits(vision)
                   ).to(device)

    def save_pretrained(self, path: str | Path, push_to_hub: bool = False,
                        repo_id: str | None = None, **hub_options: Any) -> None:
        """Write the heads, the JSON config naming the backbone specs and, when the model has
        a trained one, the logit scale and bias (as the trainer saves them); with
        ``push_to_hub``, upload the folder (``vlalign.models.hub.push_to_hub`` options)."""
        extra = {}
        if self.has_trained_logit_scale:
            extra[SCALE_KEY] = self.logit_scale.detach().float().cpu()
            if self.logit_bias is not None:
                extra[BIAS_KEY] = self.logit_bias.detach().float().cpu()
        self.heads.save_pretrained(path, extra=extra)
        maybe_push(path, push_to_hub, repo_id, **hub_options)

    def frozen_encoders(self) -> list[Any]:
        return [self.vision, self.text]

    @property
    def image_preprocess(self) -> Preprocess:
        return self.vision.preprocess

    def _head(self, head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
        return head(features.to(self.device, self.dtype)).float()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._head(self.heads.vision_head, self.vision.encode(pixels).pooled)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self._head(self.heads.text_head, self.text.encode(texts))

    def _image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        out = self.vision.encode(pixels, tokens=True)
        return self._head(self.heads.vision_head, token_head_inputs(out)), out.grid
