"""scikit-learn's 1,797 8x8 handwritten digits: a tiny labelled set for fast unit tests."""

from __future__ import annotations

import hashlib
from functools import cache, cached_property

import numpy as np
from PIL import Image

from vlalign.data.base import RAW, REWRITTEN, Example
from vlalign.data.templates import DIGIT_TEMPLATES, class_captions
from vlalign.errors import UserError
from vlalign.utils.optional import require

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_SIZE = 1500
SPLITS = ("train", "test")


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 (0..255) and their labels, loaded once per process."""
    require("sklearn", "eval")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


class Digits:
    """The digits split deterministically: the first 1,500 for train, the remaining 297 for test."""

    class_names = CLASS_NAMES

    def __init__(self, split: str = "train") -> None:
        if split not in SPLITS:
            raise UserError(f"unknown digits split {split!r}; valid: {', '.join(SPLITS)}")
        self.split = split
        self.name = f"digits:{split}"
        total = len(_digits()[1])
        self.offset, self._length = (0, TRAIN_SIZE) if split == "train" else (
            TRAIN_SIZE, total - TRAIN_SIZE)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-1 of this split's pixels and labels."""
        images, labels = _digits()
        part = slice(self.offset, self.offset + self._length)
        digest = hashlib.sha1(self.name.encode())
        digest.update(images[part].tobytes())
        digest.update(labels[part].tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return self._length

    def load(self, index: int) -> Example:
        """Item ``index`` as an 8x8 RGB image with label and two class-name captions."""
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self.name} ({self._length} items)")
        images, labels = _digits()
        label = int(labels[self.offset + index])
        raw, rewritten = class_captions(DIGIT_TEMPLATES, CLASS_NAMES[label], index)
        image = Image.fromarray(images[self.offset + index]).convert("RGB")
        return Example(key=f"{self.split}/{index:04d}", image=image,
                       captions={RAW: raw, REWRITTEN: rewritten}, label=label)
