"""Tiny real models the tests build and save to a temporary folder (never a hub name)."""

from pathlib import Path

import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.models import VLModel
from vlalign.sail.artifact import AlignmentHeads, BackboneRecord, HeadsConfig
from vlalign.sail.heads import create_head

VISION, TEXT = "bundled:mobilenetv2?size=64&runtime=torch", "bundled:bow?dim=32"  # 2 x 2 tokens


def sail_model(kind: str = "linear", **options) -> VLModel:
    """MobileNetV2 at 64 px + bag of words with freshly initialised 16-d heads (seed 0)."""
    vision, text = create_vision_encoder(VISION), create_text_encoder(TEXT)
    torch.manual_seed(0)
    vision_head = create_head(kind, vision.dim, 16, **options)
    text_head = create_head(kind, text.dim, 16, **options)
    config = HeadsConfig(vision_head=vision_head.config, text_head=text_head.config,
                         vision=BackboneRecord(VISION, vision.identity, vision.dim),
                         text=BackboneRecord(TEXT, text.identity, text.dim), embed_dim=16)
    return VLModel(vision, text, AlignmentHeads(vision_head, text_head, config))


def save_sail_teacher(path: Path) -> Path:
    """A small SAIL model to distil: MobileNetV2 at 64 px + bag of words, linear 16-d heads."""
    sail_model("linear").save_pretrained(path)
    return path


def save_tiny_dinov2(path: Path, hidden: int = 16) -> Path:
    """A random 2-layer DINOv2 (transformers Dinov2Model), 28 px with 14 px patches (2 x 2
    tokens, pooled [CLS ; mean patch] = 2 * hidden), saved as a local folder (seed 0)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=2 * hidden, image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(path)
    return path
