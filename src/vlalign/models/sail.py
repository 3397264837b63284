"""The SAIL model: frozen vision and text backbones followed by trained alignment heads."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.backbones.base import Preprocess, TextEncoder, VisionEncoder
from vlalign.errors import UserError
from vlalign.models.base import CLIPLikeModel, Images
from vlalign.sail.artifact import (
    AlignmentHeads,
    BackboneRecord,
    HeadsConfig,
    load_backbones,
    token_head_inputs,
)


class VLModel(CLIPLikeModel):
    """A CLIP-like model: frozen vision and text encoders followed by alignment heads."""

    def __init__(self, vision: VisionEncoder, text: TextEncoder, heads: AlignmentHeads):
        super().__init__()
        self.vision, self.text, self.heads = vision, text, heads

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> VLModel:
        """Load a training run directory or a saved model folder, rebuilding the backbones."""
        heads = AlignmentHeads.from_pretrained(path)
        vision, text = load_backbones(heads.config, device, path)
        return cls(vision, text, heads).to(device)

    @classmethod
    def from_backbones(cls, vision_spec: str, text_spec: str, device: str = "cpu") -> VLModel:
        """Two towers already in one joint space (e.g. an open_clip CLIP), with identity heads."""
        vision = create_vision_encoder(vision_spec, device=device)
        text = create_text_encoder(text_spec, device=device)
        if vision.dim != text.dim:
            raise UserError(f"{vision_spec} ({vision.dim}-d) and {text_spec} ({text.dim}-d) do not "
                            "share an embedding space; train heads with `vlalign train sail`")
        dim = vision.dim
        identity = {"kind": "identity", "in_dim": dim, "out_dim": dim}
        config = HeadsConfig(vision_head=identity, text_head=dict(identity),
                             vision=BackboneRecord(vision_spec, vision.identity, dim),
                             text=BackboneRecord(text_spec, text.identity, dim), method=None,
                             embed_dim=dim)
        return cls(vision, text, AlignmentHeads.from_config(config))

    def save_pretrained(self, path: str | Path) -> None:
        """Write the heads and the JSON config naming the backbone specs."""
        self.heads.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.heads.device

    @property
    def image_preprocess(self) -> Preprocess:
        return self.vision.preprocess

    @torch.inference_mode()
    def encode_image(self, images: Images, normalize: bool = False) -> torch.Tensor:
        """Images (preprocessed tensor B x 3 x H x W, or PIL images) -> B x d embeddings."""
        pooled = self.vision.encode(self.pixels(images)).pooled
        return self.heads.encode_image_features(pooled, normalize)

    @torch.inference_mode()
    def encode_text(self, texts: str | list[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> B x d embeddings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.heads.encode_text_features(self.text.encode(texts), normalize)

    @torch.inference_mode()
    def encode_image_tokens(self, images: Images,
                            normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid."""
        out = self.vision.encode(self.pixels(images, whole=True), tokens=True)
        return self.heads.encode_image_features(token_head_inputs(out), normalize), out.grid
