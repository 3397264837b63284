"""Shuffled training batches over one or more feature stores, resumable by step.

The order is a pure function of (seed, epoch): batch ``step`` of the run is rows
``perm(epoch)[i * B:(i + 1) * B]`` with ``epoch, i = divmod(step, steps_per_epoch)``, so a resumed
run reads exactly the batches an uninterrupted run would. A background thread gathers the next
batches while the current one trains; memory is a few batches, never the store.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vlalign.errors import StoreError
from vlalign.store.reader import FeatureStore


class StoreMix:
    """Several stores with the same backbones seen as one row space (concatenated)."""

    def __init__(self, stores: list[FeatureStore]):
        if not stores:
            raise StoreError("no feature store given")
        first = stores[0]
        for store in stores[1:]:
            if store.backbones != first.backbones:
                raise StoreError(f"{store.path} was encoded with {store.backbones}, but "
                                 f"{first.path} with {first.backbones}; "
                                 "stores must share backbones")
        self.stores = stores
        self.offsets = np.cumsum([0] + [len(s) for s in stores])
        self.image_dim, self.text_dim = first.image_dim, first.text_dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def kinds_available(self, kinds: list[str]) -> None:
        """StoreError if a caption kind the recipe needs is missing from a store."""
        for store in self.stores:
            missing = [k for k in kinds if k not in store.caption_kinds]
            if missing:
                raise StoreError(f"{store.path} has caption kinds {store.caption_kinds}, "
                                 f"the recipe needs {missing}")

    def gather(self, rows: np.ndarray, kinds: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image features (n x Di) and one text matrix per kind (n x Dt), float32."""
        images = np.empty((len(rows), self.image_dim), np.float32)
        texts = [np.empty((len(rows), self.text_dim), np.float32) for _ in kinds]
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            mask = which == s
            local = rows[mask] - self.offsets[s]
            store = self.stores[s]
            images[mask] = store.images(local)
            all_texts = store.texts(local)
            for j, kind in enumerate(kinds):
                texts[j][mask] = all_texts[:, store.caption_kinds.index(kind)]
        return images, texts


@dataclass
class Batch:
    step: int
    images: torch.Tensor  # B x Di
    texts: list[torch.Tensor]  # one B x Dt per caption kind


class BatchStream:
    """Deterministic shuffled batches (drop-last) from ``step`` on, with background prefetch."""

    def __init__(self, data: StoreMix, batch_size: int, kinds: list[str], seed: int,
                 rank: int = 0, world_size: int = 1, prefetch: int = 2):
        if batch_size > len(data):
            raise StoreError(f"batch size {batch_size} exceeds the {len(data)} stored pairs")
        if batch_size % world_size:
            raise StoreError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.data, self.batch_size, self.kinds, self.seed = data, batch_size, kinds, seed
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self.steps_per_epoch = len(data) // batch_size
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    def rows(self, step: int) -> np.ndarray:
        """This rank's rows of global batch ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            self._perm_epoch = epoch
        rows = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        local = self.batch_size // self.world_size
        return rows[self.rank * local:(self.rank + 1) * local]

    def _load(self, step: int) -> Batch:
        images, texts = self.data.gather(self.rows(step), self.kinds)
        return Batch(step, torch.from_numpy(images), [torch.from_numpy(t) for t in texts])

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        """Batches ``start .. stop-1``, loaded ahead by a daemon thread."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop_flag = threading.Event()

        def work() -> None:
            try:
                for step in range(start, stop):
                    if stop_flag.is_set():
                        return
                    ready.put(self._load(step))
            except Exception as error:  # handed to the consumer, raised there
                ready.put(error)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            for _ in range(start, stop):
                item = ready.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop_flag.set()
            while thread.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
