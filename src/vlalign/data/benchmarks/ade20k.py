"""ADE20K SceneParsing (ADEChallengeData2016, 150 classes) in its released layout.

Expected layout::

    ROOT/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
    ROOT/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png
    ...                                       (``training``/``ADE_train_*`` likewise)

``ROOT`` may also be ``ADEChallengeData2016`` itself. Every ``.jpg`` in ``images/<split>`` is an
item (sorted by name; 2000 for ``validation``), its mask the same-stem ``.png`` in
``annotations/<split>``. Masks are grayscale PNGs: 0 = "other" (unlabelled) becomes
``IGNORE_INDEX``, and value k in 1..150 becomes class k - 1. ``class_names`` are the 150 standard
short names (the first name of each row of ``objectInfo150``, as mmsegmentation lists them),
from "wall" to "flag". A missing root or image folder is a UserError; a missing or corrupt image
or mask, or mask values over 150, raise BadItem when loaded.
"""

from __future__ import annotations

import os

import numpy as np

from vlalign.data.benchmarks._files import Fingerprint, read_mask, require_dir
from vlalign.data.benchmarks.base import IGNORE_INDEX, SegmentationItem
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
SPLITS = {"validation": "validation", "val": "validation", "training": "training",
          "train": "training"}
DATA_DIR = "ADEChallengeData2016"

# 0 (other) -> ignore, k -> k - 1, 255 stays ignore.
_SHIFT = np.full(256, IGNORE_INDEX, dtype=np.int64)
_SHIFT[1:151] = np.arange(150)


class ADE20K:
    """An ADE20K SceneParsing split as a 150-class ``SegmentationSet``."""

    def __init__(self, root: str | os.PathLike[str], split: str = "validation") -> None:
        if split not in SPLITS:
            raise UserError(f"unknown ADE20K split {split!r}; valid: validation, training")
        split = SPLITS[split]
        given = require_dir(root, "ADE20K")
        self.root = given / DATA_DIR if (given / DATA_DIR).is_dir() else given
        self.image_dir = self.root / "images" / split
        self.mask_dir = self.root / "annotations" / split
        if not self.image_dir.is_dir():
            raise UserError(f"ADE20K image folder not found: {self.image_dir} (expected "
                            f"ROOT/{DATA_DIR}/images/{split}/ADE_*.jpg)")
        self.stems = sorted(entry.name[:-4] for entry in os.scandir(self.image_dir)
                            if entry.is_file() and entry.name.lower().endswith(".jpg"))
        if not self.stems:
            raise DataError(f"no .jpg images in {self.image_dir}")
        if not self.mask_dir.is_dir():
            raise UserError(f"ADE20K annotation folder not found: {self.mask_dir}")
        fingerprint = Fingerprint(f"ade20k:{split}")
        for stem in self.stems:
            for relative in self._relative(split, stem):
                fingerprint.add_file(self.root / relative, relative)
        self.split = split
        self.class_names = list(ADE20K_CLASSES)
        self.name = f"ade20k:{given}" + ("" if split == "validation" else f"?split={split}")
        self.fingerprint = fingerprint.hexdigest()

    @staticmethod
    def _relative(split: str, stem: str) -> tuple[str, str]:
        return f"images/{split}/{stem}.jpg", f"annotations/{split}/{stem}.png"

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> SegmentationItem:
        """Image ``index`` (RGB) and its int64 mask: 0 -> IGNORE_INDEX, k -> k - 1."""
        stem = self.stems[index]
        image_file, mask_file = self._relative(self.split, stem)
        image = decode_image(self.root / image_file)
        mask = read_mask(self.root / mask_file, 150, image.size)
        return SegmentationItem(key=stem, image=image, mask=_SHIFT[mask])
