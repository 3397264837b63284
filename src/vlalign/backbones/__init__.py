"""Frozen vision and text encoders behind two small protocols, named by spec strings."""

from vlalign.backbones.base import (
    BaseTextEncoder,
    Preprocess,
    TextEncoder,
    VisionEncoder,
    VisionOutput,
    image_to_tensor,
    normalise,
    to_uint8,
)
from vlalign.backbones.registry import (
    TEXT_SCHEMES,
    VISION_SCHEMES,
    create_text_encoder,
    create_vision_encoder,
    list_stages,
)

__all__ = [
    "TEXT_SCHEMES",
    "VISION_SCHEMES",
    "BaseTextEncoder",
    "Preprocess",
    "TextEncoder",
    "VisionEncoder",
    "VisionOutput",
    "create_text_encoder",
    "create_vision_encoder",
    "image_to_tensor",
    "list_stages",
    "normalise",
    "to_uint8",
]
