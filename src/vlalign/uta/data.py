"""Training images for UTA and fine-tuning, as pure functions of (seed, step).

Several sources form one row space (concatenated). Batch ``step`` holds the engine's
``StepOrder`` rows (a pure function of seed and step; each rank takes its slice), and an
augmented view is drawn from an RNG seeded by (seed, step, row): a resumed run decodes exactly
the pixels an uninterrupted run would. With stores (one per source, encoded from that very
source), the rows are the stored rows and every item also carries its row of the teacher's cached
targets (``uta.targets.cache_targets``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from vlalign.backbones.base import Preprocess, VisionEncoder, image_to_tensor
from vlalign.data.base import BadItem, Source
from vlalign.errors import DataError, StoreError
from vlalign.store.layout import transform_difference
from vlalign.store.reader import FeatureStore
from vlalign.train.sampler import StepOrder

CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio (log-uniform)


def augment(image: Image.Image, rng: np.random.Generator,
            scale: tuple[float, float] = (0.5, 1.0)) -> Image.Image:
    """A random resized crop (area fraction in ``scale``, aspect 3:4-4:3) and a horizontal flip
    half the time; the resize to the model's size happens in preprocessing."""
    width, height = image.size
    area = width * height * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*np.log(CROP_RATIO)))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = image.crop((left, top, left + w, top + h))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


class ImageRows(Dataset):
    """Item ``(step, row)``: the row's preprocessed pixels, label, and cached targets if any."""

    def __init__(self, sources: Sequence[Source], preprocess: Preprocess,
                 stores: Sequence[FeatureStore] | None = None, augment_seed: int | None = None,
                 targets: Sequence[np.ndarray] | None = None,
                 crop_scale: tuple[float, float] = (0.5, 1.0)):
        self.sources, self.preprocess, self.stores = list(sources), preprocess, stores
        self.augment_seed = augment_seed  # None: no augmentation
        self.crop_scale = tuple(crop_scale)
        self.targets = targets  # per store: rows x (1 + N) x D, aligned with its rows
        if stores is None:
            self.items = [np.arange(len(s)) for s in self.sources]
        else:
            self.items = [store.source_indices for store in stores]
        self.offsets = np.cumsum([0] + [len(items) for items in self.items])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        step, row = key
        part = int(np.searchsorted(self.offsets, row, side="right") - 1)
        local = row - int(self.offsets[part])
        source = self.sources[part]
        try:
            example = source.load(int(self.items[part][local]))
            image = example.image
            if self.augment_seed is not None:
                image = augment(image.convert("RGB"),
                                np.random.default_rng([self.augment_seed, step, row]),
                                self.crop_scale)
            item = {"pixels": image_to_tensor(image, self.preprocess),
                    "label": -1 if example.label is None else int(example.label)}
        except BadItem as bad:
            return {"bad": f"{source.name} item {self.items[part][local]}: {bad}", "step": step}
        item["step"] = step
        if self.targets is not None:
            item["targets"] = torch.from_numpy(np.array(self.targets[part][local]))
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; bad ones are counted (DataError if a whole batch is bad)."""
    good = [item for item in items if "bad" not in item]
    if not good:
        raise DataError(f"every item of a batch is unusable, e.g. {items[0]['bad']}")
    scalars = ("label", "step")
    batch = {key: torch.stack([item[key] for item in good]) for key in good[0]
             if key not in scalars}
    batch["label"] = torch.tensor([item["label"] for item in good])
    batch["bad"] = len(items) - len(good)
    return batch


class MaskingCollate:
    """``collate`` plus each good item's kept patch indices (``keep``), drawn in the loader's
    worker: ``keep_fn(step, positions)`` gets the items' positions in the global batch (this
    rank's rows start at ``first_position``)."""

    def __init__(self, keep_fn: Callable[[int, list[int]], torch.Tensor],
                 first_position: int) -> None:
        self.keep_fn, self.first_position = keep_fn, first_position

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(items)
        positions = [self.first_position + i for i, item in enumerate(items) if "bad" not in item]
        batch["keep"] = self.keep_fn(items[0]["step"], positions)
        return batch


class StepBatches(Sampler[list[tuple[int, int]]]):
    """This rank's ``(step, row)`` keys of global batches ``start .. stop-1`` (``StepOrder``)."""

    def __init__(self, rows: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0, stop: int = 0):
        self.order = StepOrder(rows, batch_size, seed, rank, world_size, noun="training images")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size, self.start, self.stop = rank, world_size, start, stop
        self.steps_per_epoch = self.order.steps_per_epoch

    def span(self, start: int, stop: int) -> StepBatches:
        """The same stream restricted to steps ``start .. stop-1``."""
        return StepBatches(self.rows, self.batch_size, self.seed, self.rank, self.world_size,
                           start, stop)

    def rows_of(self, step: int) -> np.ndarray:
        """This rank's rows of global batch ``step``."""
        return self.order.rows_of(step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [(step, int(row)) for row in self.rows_of(step)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def open_stores(paths: Sequence[str], sources: Sequence[Source], vision: VisionEncoder,
                grid: tuple[int, int]) -> list[FeatureStore]:
    """The stores of ``sources`` (same order), checked: encoded from exactly that source, by the
    teacher's vision backbone with its current image transform, with token maps on the
    teacher's grid."""
    vision_identity = vision.identity
    stores = []
    for path, source in zip(paths, sources):
        store = FeatureStore(path)
        if store.manifest["dataset"]["fingerprint"] != source.fingerprint:
            raise StoreError(f"{path} was encoded from {store.manifest['dataset']['name']}, not "
                             f"from {source.name}; list stores in the order of data")
        if store.backbones[0] != vision_identity:
            raise StoreError(f"{path} was encoded with {store.backbones[0]}, the teacher's "
                             f"vision backbone is {vision_identity}; re-encode with it")
        difference = transform_difference(store.transform, vision.preprocess.to_dict())
        if difference:
            raise StoreError(f"{path} holds features made with another image transform "
                             f"({difference}); re-encode it")
        if not store.has_tokens:
            raise StoreError(f"{path} has no token maps; re-encode with --tokens")
        if store.grid != tuple(grid):
            raise StoreError(f"{path} holds {store.grid} token maps, the teacher gives {grid}")
        stores.append(store)
    return stores
