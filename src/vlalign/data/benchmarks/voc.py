"""Pascal VOC 2012 semantic segmentation in the released VOCdevkit layout.

Expected layout::

    ROOT/JPEGImages/2007_000033.jpg
    ROOT/SegmentationClass/2007_000033.png
    ROOT/ImageSets/Segmentation/val.txt          (train.txt, trainval.txt: one image id a line)

where ``ROOT`` is ``VOCdevkit/VOC2012``; ``VOCdevkit`` or the folder holding it are accepted too.
``SegmentationClass`` PNGs are palette images whose pixel values are class indices 0..20
(0 = background) and 255 = object borders / void; they are read as indices, without palette
conversion. The standard evaluation uses the 1449 ``val`` images.

Two protocols: ``background=True`` ("VOC21", fully supervised style) keeps the 21 classes with
"background" first; ``background=False`` ("VOC20", the usual open-vocabulary protocol) drops
background: its pixels become ``IGNORE_INDEX`` and the 20 object classes are 0..19. Class names
are the standard VOC classes written as words for text prompts ("dining table", "potted plant",
"tv monitor"; ``VOC_IDS`` has the devkit spellings). A missing root or split list is a
UserError; a missing or corrupt image or mask, or a mask with values outside 0..20/255, raises
BadItem when loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vlalign.data.benchmarks._files import (
    Fingerprint,
    first_existing,
    read_bytes,
    read_mask,
    read_text,
    require_dir,
)
from vlalign.data.benchmarks.base import IGNORE_INDEX, SegmentationItem
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

VOC_IDS = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor"]
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
               "potted plant", "sheep", "sofa", "train", "tv monitor"]
SPLITS = ("val", "train", "trainval")
SPLIT_DIR = Path("ImageSets") / "Segmentation"

# VOC20: background (0) -> ignore, class k -> k - 1, 255 stays ignore.
_DROP_BACKGROUND = np.full(256, IGNORE_INDEX, dtype=np.int64)
_DROP_BACKGROUND[1:21] = np.arange(20)


class VOCSegmentation:
    """A VOC 2012 segmentation split as a ``SegmentationSet`` (VOC20 or VOC21)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "val",
                 background: bool = False) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown VOC split {split!r}; valid: {', '.join(SPLITS)}")
        given = require_dir(root, "Pascal VOC")
        candidates = [given, given / "VOC2012", given / "VOCdevkit" / "VOC2012"]
        found = first_existing([folder / SPLIT_DIR for folder in candidates])
        if found is None:
            raise UserError(f"VOC split list not found: {given / SPLIT_DIR / f'{split}.txt'} "
                            f"(expected ROOT = VOCdevkit/VOC2012 or VOCdevkit)")
        self.root = found.parent.parent
        self.split_file = self.root / SPLIT_DIR / f"{split}.txt"
        if not self.split_file.is_file():
            raise UserError(f"VOC split list not found: {self.split_file}")
        data = read_bytes(self.split_file)
        self.ids = [line.split()[0] for line in read_text(self.split_file, data).splitlines()
                    if line.strip()]
        if not self.ids:
            raise DataError(f"{self.split_file}: no image ids")
        fingerprint = Fingerprint(f"voc:{split}:{'voc21' if background else 'voc20'}")
        fingerprint.add_bytes(data)
        for image_id in self.ids:
            for relative in self._relative(image_id):
                fingerprint.add_file(self.root / relative, relative)
        self.background = background
        self.class_names = list(VOC_CLASSES if background else VOC_CLASSES[1:])
        scheme = "voc21" if background else "voc"
        self.name = f"{scheme}:{given}" + ("" if split == "val" else f"?split={split}")
        self.fingerprint = fingerprint.hexdigest()

    @staticmethod
    def _relative(image_id: str) -> tuple[str, str]:
        return f"JPEGImages/{image_id}.jpg", f"SegmentationClass/{image_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> SegmentationItem:
        """Image ``index`` (RGB) and its int64 class mask under the chosen protocol."""
        image_id = self.ids[index]
        image_file, mask_file = self._relative(image_id)
        image = decode_image(self.root / image_file)
        mask = read_mask(self.root / mask_file, 20, image.size)
        if not self.background:
            mask = _DROP_BACKGROUND[mask]
        return SegmentationItem(key=image_id, image=image, mask=mask)
