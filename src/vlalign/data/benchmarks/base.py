"""Item types of the evaluation sets that are not plain image/caption/label sources.

Classification and retrieval sets are ordinary ``Source``s (labels + class names, or several
captions per image). Pair sets (Winoground, MMVP-VLM) and segmentation sets have their own
items, defined here so readers and tasks agree on one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from vlalign.data.base import BadItem
from vlalign.errors import UserError

IGNORE_INDEX = 255  # segmentation pixels that count for no class (borders, unlabelled, background)


@dataclass
class PairItem:
    """Two images and two captions; caption i describes image i (Winoground, MMVP-VLM)."""

    key: str
    images: tuple[Image.Image, Image.Image]
    captions: tuple[str, str]
    tag: str = ""  # the kind of difference (Winoground's collapsed tag, MMVP's visual pattern)


@runtime_checkable
class PairSet(Protocol):
    """An indexable collection of PairItems."""

    name: str

    def __len__(self) -> int: ...

    def load(self, index: int) -> PairItem: ...


@dataclass
class SegmentationItem:
    """An image and its H x W class-index mask (``IGNORE_INDEX`` where no class applies)."""

    key: str
    image: Image.Image
    mask: np.ndarray  # H x W, integer, same size as the image


@runtime_checkable
class SegmentationSet(Protocol):
    """An indexable collection of SegmentationItems over ``class_names``."""

    name: str
    class_names: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> SegmentationItem: ...


def dataset_kind(dataset: object) -> str:
    """"images" (a Source), "pairs" or "segmentation", from the type of the first item."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise UserError(f"dataset {getattr(dataset, 'name', dataset)!r} is empty")
    try:
        item = dataset.load(0)  # type: ignore[attr-defined]
    except BadItem:
        return "images"  # only image sources skip bad items
    if isinstance(item, PairItem):
        return "pairs"
    return "segmentation" if isinstance(item, SegmentationItem) else "images"
