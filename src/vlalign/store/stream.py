"""Shuffled training batches over one or more feature stores, resumable by step.

The order is the engine's ``StepOrder`` (a pure function of seed and step), so a resumed run
reads exactly the batches an uninterrupted run would. Rows are gathered from the memory-mapped
shards as stored (float16) and cast once on the device; memory is a few batches, never the store.
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
from vlalign.train.sampler import StepOrder


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
        self.dtype = np.result_type(*(np.dtype(s.manifest["dtype"]) for s in stores))

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
        """Image features (n x Di) and one text matrix per kind (n x Dt), in the stored dtype."""
        images = np.empty((len(rows), self.image_dim), self.dtype)
        texts = [np.empty((len(rows), self.text_dim), self.dtype) for _ in kinds]
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

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """The batch on ``device`` in ``dtype``: one copy and one cast of the stored rows."""
        return Batch(self.step, self.images.to(device, dtype, non_blocking=True),
                     [t.to(device, dtype, non_blocking=True) for t in self.texts])


class BatchStream:
    """Deterministic shuffled batches (drop-last, ``StepOrder``) from a step on.

    ``prefetch`` > 0 gathers the next batches in a background thread: worth it when the step
    runs on a GPU; on a CPU the thread competes with torch's own threads for the cores (measured:
    steps up to 2x slower on 2 cores), so the CPU default gathers in the loop.
    """

    def __init__(self, data: StoreMix, batch_size: int, kinds: list[str], seed: int,
                 rank: int = 0, world_size: int = 1, prefetch: int = 0):
        self.order = StepOrder(len(data), batch_size, seed, rank, world_size,
                               noun="stored pairs", error=StoreError)
        self.data, self.kinds, self.prefetch = data, kinds, prefetch
        self.steps_per_epoch = self.order.steps_per_epoch

    def load(self, step: int) -> Batch:
        """This rank's rows of global batch ``step``, as stored (float16)."""
        images, texts = self.data.gather(self.order.rows_of(step), self.kinds)
        return Batch(step, torch.from_numpy(images), [torch.from_numpy(t) for t in texts])

    def iterate(self, start: int, stop: int) -> Iterator[Batch]:
        """Batches ``start .. stop-1``."""
        if not self.prefetch:
            for step in range(start, stop):
                yield self.load(step)
            return
        yield from self._prefetched(start, stop)

    def _prefetched(self, start: int, stop: int) -> Iterator[Batch]:
        """Batches ``start .. stop-1``, loaded ahead by a daemon thread."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop_flag = threading.Event()

        def work() -> None:
            try:
                for step in range(start, stop):
                    if stop_flag.is_set():
                        return
                    ready.put(self.load(step))
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
