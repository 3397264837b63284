"""Tiny real models the tests build and save to a temporary folder (never a hub name)."""

from pathlib import Path

import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.model import AlignmentHeads, VLModel
from vlalign.sail.heads import create_head

VISION, TEXT = "bundled:mobilenetv2?size=64&runtime=torch", "bundled:bow?dim=32"  # 2 x 2 tokens


def save_sail_teacher(path: Path) -> Path:
    """A small SAIL model to distil: MobileNetV2 at 64 px + bag of words, linear 16-d heads."""
    vision, text = create_vision_encoder(VISION), create_text_encoder(TEXT)
    torch.manual_seed(0)
    heads = {"vision_head": create_head("linear", vision.dim, 16),
             "text_head": create_head("linear", text.dim, 16)}
    config = {"method": "sail", "embed_dim": 16,
              "vision": {"spec": VISION, "identity": vision.identity, "dim": vision.dim},
              "text": {"spec": TEXT, "identity": text.identity, "dim": text.dim},
              **{k: v.config for k, v in heads.items()}}
    VLModel(vision, text, AlignmentHeads(heads["vision_head"], heads["text_head"], config)) \
        .save_pretrained(path)
    return path
