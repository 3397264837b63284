"""Embeddings of evaluation data from any CLIP-like model, encoding each image at most once.

For a vlalign model, frozen backbone features come from a feature store built from the same data
with the same vision backbone when one is given (the demo's stores), else from a cache keyed by
(backbone identity, data fingerprint); the trained heads are then applied to those features.
Any other object with ``encode_image`` / ``encode_text`` / ``preprocess`` (an open_clip model) is
run directly. Unreadable items are skipped and counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vlalign.backbones.base import VisionEncoder, image_to_tensor
from vlalign.data.base import BadItem, Source
from vlalign.models.sail import VLModel
from vlalign.store.reader import FeatureStore
from vlalign.utils.files import cache_dir

log = logging.getLogger(__name__)


class CLIPLike(Protocol):
    """What evaluation needs from a model (open_clip's duck type)."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor: ...

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...


@dataclass
class Embedded:
    """Row i is source item ``indices[i]``; ``labels`` is None for unlabelled data."""

    embeddings: torch.Tensor  # N x d, float32
    labels: torch.Tensor | None
    indices: np.ndarray
    skipped: int = 0


class _Decoded(torch.utils.data.Dataset):
    """Item i of a source as (i, pixels, label), or (i, None, reason) when it cannot be read."""

    def __init__(self, source: Source, to_tensor: Callable[[Image.Image], torch.Tensor]) -> None:
        self.source, self.to_tensor = source, to_tensor

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, Any]:
        try:
            example = self.source.load(index)
            pixels = self.to_tensor(example.image)
        except BadItem as bad:
            return index, None, str(bad)
        return index, pixels, -1 if example.label is None else int(example.label)


def _batches(source: Source, to_tensor: Callable[[Image.Image], torch.Tensor], batch_size: int,
             progress: bool, num_workers: int = 0, pin_memory: bool = False,
             ) -> Iterator[tuple[list[int], torch.Tensor, list[int]]]:
    """(source indices, pixels, labels) batches, decoded by ``num_workers`` DataLoader workers
    (0: in this process); bad items are logged and left out."""
    loader = torch.utils.data.DataLoader(
        _Decoded(source, to_tensor), batch_size=batch_size, num_workers=num_workers,
        collate_fn=list, prefetch_factor=4 if num_workers else None)
    with tqdm(total=len(source), unit="img", desc=f"embed {source.name}", disable=not progress,
              dynamic_ncols=True) as bar:
        for items in loader:
            bar.update(len(items))
            readable = []
            for index, pixels, label in items:
                if pixels is None:
                    log.warning("skipping %s item %d: %s", source.name, index, label)
                else:
                    readable.append((index, pixels, label))
            if readable:
                indices, pixels, labels = zip(*readable, strict=True)
                batch = torch.stack(pixels)
                yield list(indices), batch.pin_memory() if pin_memory else batch, list(labels)


def _device_of(model: Any) -> torch.device:
    """Where a model's inputs go: its ``device``, else its first parameter's, else the CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def _labels(labels: np.ndarray) -> torch.Tensor | None:
    return None if labels.size == 0 or (labels < 0).all() else torch.from_numpy(labels)


def find_store(stores: Sequence[FeatureStore], source: Source,
               vision_identity: str) -> FeatureStore | None:
    """A store holding exactly ``source`` encoded by the same vision backbone, if any."""
    for store in stores:
        if (store.manifest["dataset"]["fingerprint"] == source.fingerprint
                and store.backbones[0] == vision_identity):
            return store
    return None


def backbone_features(vision: VisionEncoder, source: Source,
                      stores: Sequence[FeatureStore] = (), batch_size: int = 64,
                      progress: bool = True, num_workers: int = 0,
                      device: torch.device | None = None) -> Embedded:
    """Pooled frozen features of every readable item: from a matching store or the cache
    (encoding on ``device``, the CPU by default, with ``num_workers`` decoding workers)."""
    device = device or torch.device("cpu")
    store = find_store(stores, source, vision.identity)
    if store is not None:
        rows = np.arange(len(store))
        features = torch.from_numpy(store.images(rows).astype(np.float32))
        return Embedded(features, _labels(store.labels), store.source_indices,
                        store.manifest["dataset"]["items"] - len(store))
    transform = sorted(vision.preprocess.to_dict().items())  # features change with it too
    key = hashlib.sha1(f"{vision.identity}|{source.fingerprint}|{transform}".encode()
                       ).hexdigest()[:20]
    path = cache_dir("features") / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            return Embedded(torch.from_numpy(cached["features"]), _labels(cached["labels"]),
                            cached["indices"], int(cached["skipped"]))
    chunks, all_indices, all_labels = [], [], []
    with torch.inference_mode():
        to_tensor = partial(image_to_tensor, pre=vision.preprocess)
        for indices, pixels, labels in _batches(source, to_tensor, batch_size, progress,
                                                num_workers, device.type == "cuda"):
            pixels = pixels.to(device, non_blocking=True)
            chunks.append(vision.encode(pixels).pooled.float().cpu())
            all_indices += indices
            all_labels += labels
    features = torch.cat(chunks) if chunks else torch.zeros(0, vision.dim)
    indices, labels = np.array(all_indices, np.int64), np.array(all_labels, np.int64)
    skipped = len(source) - len(indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(path, features=features.numpy(), labels=labels, indices=indices,
              skipped=np.array(skipped))
    return Embedded(features, _labels(labels), indices, skipped)


def _save_npz(path: Any, **arrays: np.ndarray) -> None:
    """Write an .npz through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def embed_images(model: CLIPLike, source: Source, stores: Sequence[FeatureStore] = (),
                 batch_size: int = 64, progress: bool = True,
                 num_workers: int = 0) -> Embedded:
    """L2-normalised image embeddings of every readable item of ``source``, on the model's
    device, images decoded by ``num_workers`` DataLoader workers (0: in this process)."""
    device = _device_of(model)
    if isinstance(model, VLModel):
        frozen = backbone_features(model.vision, source, stores, batch_size, progress,
                                   num_workers, device)
        with torch.inference_mode():
            embeddings = torch.cat([model.heads.encode_image_features(chunk.to(device)).cpu()
                                    for chunk in frozen.embeddings.split(8192)])
        return Embedded(embeddings, frozen.labels, frozen.indices, frozen.skipped)
    chunks, all_indices, all_labels = [], [], []
    with torch.inference_mode():
        for indices, pixels, labels in _batches(source, model.preprocess, batch_size, progress,
                                                num_workers, device.type == "cuda"):
            pixels = pixels.to(device, non_blocking=True)
            chunks.append(F.normalize(model.encode_image(pixels).float(), dim=-1).cpu())
            all_indices += indices
            all_labels += labels
    labels = np.array(all_labels, np.int64)
    return Embedded(torch.cat(chunks), _labels(labels), np.array(all_indices, np.int64),
                    len(source) - len(all_indices))


def embed_texts(model: CLIPLike, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, ``batch_size`` strings per forward."""
    with torch.inference_mode():
        return torch.cat([F.normalize(model.encode_text(texts[i:i + batch_size]).float(),
                                      dim=-1).cpu() for i in range(0, len(texts), batch_size)])


def embed_pil(model: CLIPLike, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of in-memory images (pairs, canvases)."""
    device, chunks = _device_of(model), []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([model.preprocess(im) for im in images[i:i + batch_size]])
            chunks.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1))
    return torch.cat(chunks).cpu()
