"""Image-caption and image-label sources, image decoding and caption templates."""

from vlalign.data.base import RAW, REWRITTEN, BadItem, Example, Source
from vlalign.data.images import decode_image
from vlalign.data.registry import DATASETS, Subset, create_source, source_summary
from vlalign.data.templates import IMAGENET_TEMPLATES, templates_for

__all__ = ["DATASETS", "IMAGENET_TEMPLATES", "RAW", "REWRITTEN", "BadItem", "Example", "Source",
           "Subset", "create_source", "decode_image", "source_summary", "templates_for"]
