"""Shuffled training batches over one or more feature stores, resumable by step.

The order is the engine's ``StepOrder`` (a pure function of seed and step), so a resumed run
reads exactly the batches an uninterrupted run would. Rows are gathered from the memory-mapped
shards as stored (float16) and cast once on the device; memory is a few batches, never the store.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vlalign.errors import StoreError
from vlalign.store.layout import transform_difference
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
            difference = transform_difference(first.transform, store.transform,
                                              names=("first", "this"))
            if difference:
                raise StoreError(f"{store.path} and {first.path} hold image features of "
                                 f"different image transforms ({difference}); stores to mix "
                                 "must share it")
        self.stores = stores
        self.offsets = np.cumsum([0] + [len(s) for s in stores])
        self.image_dim, self.text_dim = first.image_dim, first.text_dim
        self.dtype = np.result_type(*(np.dtype(s.manifest["dtype"]) for s in stores))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def usable_kinds(self, kinds: list[str]) -> tuple[list[str], list[str]]:
        """The caption kinds of ``kinds`` to train on, and one line to log per thing to know.

        A kind is used when every (non-empty) store really holds it: a store without the column,
        or whose rows all repeat the raw caption there (a source without rewritten captions),
        leaves the kind out for the whole run rather than training on a copy of the raw
        caption as a second positive. A kind only some rows hold is used, with a note of how
        many repeat the raw caption. StoreError when no kind is left.
        """
        used, lacking, notes = [], {}, []
        for kind in kinds:
            for store in self.stores:
                count = store.caption_counts.get(kind, 0)
                if len(store) and count == 0:
                    lacking.setdefault(kind, []).append(store)
            if kind not in lacking:
                used.append(kind)
        if not used:
            raise StoreError(f"{self._describe(lacking)}; the recipe's positives {kinds} leave "
                             "nothing to train on (set positives to the kinds the store has)")
        for kind in used:
            for store in self.stores:
                count = store.caption_counts.get(kind, 0)
                if len(store) and count < len(store):
                    notes.append(f"store {store.path}: {count} of {len(store)} rows have a "
                                 f"{kind!r} caption; the others repeat the raw caption")
        if lacking:
            number = "one positive" if len(used) == 1 else f"{len(used)} positives"
            notes.insert(0, f"{self._describe(lacking)}: training with {number} "
                         f"({', '.join(repr(k) for k in used)})")
        return used, notes

    @staticmethod
    def _describe(lacking: dict[str, list[FeatureStore]]) -> str:
        """'store X has only 'raw' captions' for each store lacking a kind, joined."""
        stores = {store.path: store for found in lacking.values() for store in found}
        return "; ".join(
            f"store {path} has only {' and '.join(repr(k) for k in s.real_caption_kinds) or 'no'}"
            " captions" for path, s in stores.items())

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
        """The batch on ``device`` in ``dtype``: copied as stored (float16, half the bytes;
        asynchronous from pinned memory) and cast on the device."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True).to(dtype)

        return Batch(self.step, move(self.images), [move(t) for t in self.texts])


class ResidentRows:
    """Every row of a StoreMix held in memory on one device (float16 as stored), indexed there.

    ``data_on_device: true``: a store that fits in GPU memory (CC3M's DINOv2-L + GTE features
    are about 23 GB) is read from disk once instead of through the host every step. Under
    torchrun each rank holds a full copy, since its rows of a global batch range over the whole
    store. StoreError, before anything is copied, when it would not fit.
    """

    CHUNK_ROWS = 65536  # rows copied per transfer while loading

    def __init__(self, data: StoreMix, kinds: list[str], device: torch.device) -> None:
        need = len(data) * (data.image_dim + len(kinds) * data.text_dim) * data.dtype.itemsize
        free = free_memory_bytes(device)
        if need > 0.9 * free:
            raise StoreError(f"data_on_device: the stores need {need / 2**30:.1f} GiB, {device} "
                             f"has {free / 2**30:.1f} GiB free; set data_on_device: false")
        dtype = getattr(torch, data.dtype.name)
        self.images = torch.empty(len(data), data.image_dim, dtype=dtype, device=device)
        self.texts = [torch.empty(len(data), data.text_dim, dtype=dtype, device=device)
                      for _ in kinds]
        for start in range(0, len(data), self.CHUNK_ROWS):
            rows = np.arange(start, min(start + self.CHUNK_ROWS, len(data)))
            images, texts = data.gather(rows, kinds)
            self.images[rows[0]:rows[-1] + 1] = torch.from_numpy(images)
            for held, chunk in zip(self.texts, texts, strict=True):
                held[rows[0]:rows[-1] + 1] = torch.from_numpy(chunk)
        self.device = device

    def take(self, step: int, rows: np.ndarray) -> Batch:
        """The rows of one batch, gathered on the device."""
        index = torch.from_numpy(rows).to(self.device, non_blocking=True)
        return Batch(step, self.images.index_select(0, index),
                     [t.index_select(0, index) for t in self.texts])


def free_memory_bytes(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class BatchStream:
    """Deterministic shuffled batches (drop-last, ``StepOrder``) from a step on.

    Each rank gathers only its own rows of each global batch. ``prefetch`` > 0 gathers the next
    batches in a background thread: worth it when the step runs on a GPU; on a CPU the thread
    competes with torch's own threads for the cores (measured: steps up to 2x slower on 2
    cores), so the CPU default gathers in the loop. ``pin_memory`` puts each gathered batch in
    page-locked memory, so its copy to a GPU is asynchronous. ``resident`` (``ResidentRows``)
    replaces the host gather by an index on the device.
    """

    def __init__(self, data: StoreMix, batch_size: int, kinds: list[str], seed: int,
                 rank: int = 0, world_size: int = 1, prefetch: int = 0,
                 pin_memory: bool = False, resident: ResidentRows | None = None):
        self.order = StepOrder(len(data), batch_size, seed, rank, world_size,
                               noun="stored pairs", error=StoreError)
        self.data, self.kinds, self.prefetch = data, kinds, prefetch
        self.pin_memory, self.resident = pin_memory, resident
        self.steps_per_epoch = self.order.steps_per_epoch

    def load(self, step: int) -> Batch:
        """This rank's rows of global batch ``step``, as stored (float16)."""
        rows = self.order.rows_of(step)
        if self.resident is not None:
            return self.resident.take(step, rows)
        images, texts = self.data.gather(rows, self.kinds)
        tensors = [torch.from_numpy(x) for x in (images, *texts)]
        if self.pin_memory:
            tensors = [t.pin_memory() for t in tensors]
        return Batch(step, tensors[0], tensors[1:])

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
