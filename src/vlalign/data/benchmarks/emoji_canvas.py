"""Offline open-vocabulary segmentation: 2-4 emoji pasted on a plain or noisy canvas.

Each canvas is generated from ``(seed, index)`` alone, so item i is the same in every run and
process. Masks are exact: a pixel belongs to the top-most emoji whose alpha there is over half,
and every other pixel is ``IGNORE_INDEX`` (like the VOC20 protocol, background is not a class).
Classes are either ``classes`` emoji names drawn from the split (``by=name``) or the Unicode
subcategories of the split's emoji (``by=subcategory``). Skin-tone variants are left out: their
names differ only in the tone.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
from PIL import Image

from vlalign.data.benchmarks.base import IGNORE_INDEX, SegmentationItem
from vlalign.data.emoji import IMAGE_DIR, Emoji, EmojiEntry
from vlalign.data.images import decode_rgba
from vlalign.errors import UserError

GROUPINGS = ("name", "subcategory")
EMOJI_SIZES = (64, 96)  # pasted side length range, pixels
PLACEMENT_TRIES = 20  # random positions tried before accepting an overlap


class EmojiCanvases:
    """A SegmentationSet of ``count`` generated canvases (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "test", by: str = "name", count: int = 200,
                 classes: int = 20, seed: int = 0, size: int = 224) -> None:
        if by not in GROUPINGS:
            raise UserError(f"unknown emoji canvas grouping {by!r}; valid: {', '.join(GROUPINGS)}")
        self.emoji = Emoji(root, split)
        pool = [e for e in self.emoji.entries if not e.tones]
        if by == "name":
            pool = sorted(random.Random(seed).sample(pool, min(classes, len(pool))),
                          key=lambda e: e.raw_caption)
            self.class_names = [e.raw_caption for e in pool]
        else:
            self.class_names = sorted({_subcategory(e) for e in pool})
        self.pool, self.by, self.count, self.seed, self.size = pool, by, count, seed, size
        self.name = f"emoji-canvas:{split}?by={by}"
        self.fingerprint = hashlib.sha1(
            f"{self.emoji.fingerprint}:{by}:{count}:{classes}:{seed}:{size}".encode()).hexdigest()

    def __len__(self) -> int:
        return self.count

    def _label(self, entry: EmojiEntry) -> int:
        key = entry.raw_caption if self.by == "name" else _subcategory(entry)
        return self.class_names.index(key)

    def load(self, index: int) -> SegmentationItem:
        """Canvas ``index``: the composed RGB image and its exact class mask."""
        if not 0 <= index < self.count:
            raise IndexError(f"canvas {index} out of range ({self.count})")
        rng = random.Random(f"{self.seed}:{index}")
        canvas = _background(rng, self.size)
        mask = np.full((self.size, self.size), IGNORE_INDEX, dtype=np.int64)
        boxes: list[tuple[int, int, int]] = []
        for entry in rng.sample(self.pool, rng.randint(2, 4)):
            side = rng.randint(*EMOJI_SIZES)
            x, y = _place(rng, self.size, side, boxes)
            boxes.append((x, y, side))
            sprite = decode_rgba(self.emoji.root / IMAGE_DIR / entry.image)
            sprite = sprite.resize((side, side), Image.BICUBIC)
            canvas.paste(sprite, (x, y), sprite)
            inside = np.asarray(sprite)[:, :, 3] > 127
            mask[y:y + side, x:x + side][inside] = self._label(entry)
        return SegmentationItem(key=f"canvas-{self.seed}-{index}", image=canvas, mask=mask)


def _subcategory(entry: EmojiEntry) -> str:
    return entry.subcategory.replace("-", " ")


def _background(rng: random.Random, size: int) -> Image.Image:
    """A plain light colour or uniform colour noise, half of the time each."""
    if rng.random() < 0.5:
        return Image.new("RGB", (size, size), tuple(rng.randint(150, 255) for _ in range(3)))
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (size, size, 3))
    return Image.fromarray(noise.astype(np.uint8), "RGB")


def _place(rng: random.Random, size: int, side: int,
           boxes: list[tuple[int, int, int]]) -> tuple[int, int]:
    """A top-left corner for a ``side`` square, avoiding earlier boxes when it can."""
    for _ in range(PLACEMENT_TRIES):
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        if all(x + side <= bx or bx + bs <= x or y + side <= by or by + bs <= y
               for bx, by, bs in boxes):
            return x, y
    return x, y
