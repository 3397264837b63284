"""Read a feature store by random access, with memory bounded by the rows asked for.

A store that fits in an eighth of the machine's memory is memory-mapped once and its rows copied
out of the mappings (40x faster than a read per row once the pages are cached; the pages are the
OS's shared, reclaimable page cache, so at most that eighth shows in the resident memory).
Larger stores, and rows that must come from the disk, are read with positional reads
(``os.preadv``) straight into the batch, one read per run of consecutive rows, several shards at a
time: nothing is mapped, so resident memory is the batches in flight, not the pages of a store
far larger than RAM. Each shard file's header is checked once against the manifest (shape, dtype,
size), so a truncated or mismatched shard is a StoreError, never silently wrong rows. Captions,
keys and labels live in the small per-shard meta files and are loaded on first use.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from vlalign.data.base import RAW
from vlalign.errors import StoreError
from vlalign.store.layout import MANIFEST, PROMPTS, shard_dir, shard_file
from vlalign.utils.files import read_json, sha256_file

READ_THREADS = 8  # shards read at once by a gather from disk (keeps a cold disk busy)
COLD_ROW_S = 40e-6  # seconds per row above which a gather counts as reading from disk
MAPPED_FRACTION = 8  # a store smaller than 1/8 of the memory is memory-mapped (see above)


@dataclass(frozen=True)
class _ArrayFile:
    """Where one shard array's rows live in its .npy file."""

    path: Path
    offset: int  # byte offset of row 0
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _read_header(path: Path, rows: int, row_shape: tuple[int, ...], dtype: str) -> _ArrayFile:
    """Parse a shard's .npy header and check it against what the manifest promises."""
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read = (npy_format.read_array_header_1_0 if version == (1, 0)
                    else npy_format.read_array_header_2_0)
            shape, fortran, found = read(handle)
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as error:
        raise StoreError(f"{path}: cannot read ({error}); re-encode the store") from None
    expected = (rows, *row_shape)
    wanted = np.dtype(dtype)
    if fortran or found != wanted or shape[0] != rows or (
            rows and row_shape and shape[1:] != row_shape):
        raise StoreError(f"{path}: holds {found} {shape}, the manifest promises {wanted} "
                         f"{expected}; the store is inconsistent — re-encode it")
    array = _ArrayFile(path, offset, tuple(shape), found)
    if size != offset + rows * array.row_bytes:
        raise StoreError(f"{path}: {size} bytes, expected {offset + rows * array.row_bytes} "
                         "(truncated or damaged); re-encode the store")
    return array


def _memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class FeatureStore:
    """A complete feature store on disk: image, caption and optional token features by row."""

    def __init__(self, path: str | Path, verify: bool = False):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise StoreError(f"{self.path} is not a feature store (no {MANIFEST}); "
                             "build one with `vlalign encode`")
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if self.manifest.get("status") != "complete":
            command = "import-embeddings" if self.manifest.get("imported") else "encode"
            raise StoreError(f"{self.path} is incomplete (status {self.manifest.get('status')!r});"
                             f" rerun the same `vlalign {command}` command to finish it")
        self.shard_rows = np.array([s["rows"] for s in self.manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)])
        self._arrays: dict[tuple[int, str], _ArrayFile] = {}
        self._from_disk = False  # did the last gather wait on the disk? then use threads
        self._maps: dict[Path, np.memmap] = {}
        self._mapped = self._size_bytes() * MAPPED_FRACTION < _memory_bytes()
        if verify:
            self.verify()

    # --- description -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def image_dim(self) -> int:
        return int(self.manifest["vision"]["dim"])

    @property
    def text_dim(self) -> int:
        return int(self.manifest["text"]["dim"])

    @property
    def caption_kinds(self) -> list[str]:
        return list(self.manifest["caption_kinds"])

    @cached_property
    def caption_counts(self) -> dict[str, int]:
        """Rows holding their own caption of each kind; the others repeat the raw caption (the
        source had none of that kind). Recorded by the encode; for stores encoded before it
        was, counted from the stored captions (a caption equal to the raw one is not its own)."""
        kinds = self.caption_kinds
        counts = self.manifest.get("caption_counts")
        if counts is not None:
            return {kind: int(counts.get(kind, 0)) for kind in kinds}
        if RAW not in kinds:
            return dict.fromkeys(kinds, len(self))
        raw = kinds.index(RAW)
        return {kind: len(self) if j == raw else sum(row[j] != row[raw] for row in self.captions)
                for j, kind in enumerate(kinds)}

    @property
    def real_caption_kinds(self) -> list[str]:
        """The caption kinds at least one row really has (see ``caption_counts``)."""
        return [kind for kind, n in self.caption_counts.items() if n > 0]

    @property
    def has_tokens(self) -> bool:
        return bool(self.manifest["tokens"])

    @property
    def grid(self) -> tuple[int, int] | None:
        grid = self.manifest.get("grid")
        return tuple(grid) if grid else None

    @property
    def backbones(self) -> tuple[str, str]:
        """(vision identity, text identity): stores can be mixed only when these match (and
        their ``transform``)."""
        return self.manifest["vision"]["identity"], self.manifest["text"]["identity"]

    @property
    def transform(self) -> dict[str, Any] | None:
        """The image transform the features were made with (``Preprocess.to_dict()``); older
        stores hold only size, mean, std and interpolation (see layout.transform_difference)."""
        return self.manifest["vision"].get("preprocess")

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest["dataset"].get("class_names")

    def class_prompts(self) -> np.ndarray | None:
        """C x T x D text features of the class prompts, or None for unlabelled data."""
        if not self.manifest.get("prompts_sha256"):
            return None
        return np.load(self.path / PROMPTS, allow_pickle=False)

    def verify(self, rank: int = 0, world_size: int = 1) -> None:
        """Check shard files against the manifest's sha256 (every ``world_size``-th shard from
        ``rank``, so ranks can share the work); StoreError names the first bad file."""
        for shard in self.manifest["shards"][rank::world_size]:
            for what, digest in shard["sha256"].items():
                path = shard_file(self.path, shard["index"], what)
                if not path.exists() or sha256_file(path) != digest:
                    raise StoreError(f"{path}: checksum mismatch or missing file; the store is "
                                     "corrupt — re-encode it")

    # --- rows --------------------------------------------------------------------------------
    def _row_shape(self, what: str) -> tuple[int, ...]:
        if what == "images":
            return (self.image_dim,)
        if what == "texts":
            return (len(self.caption_kinds), self.text_dim)
        grid = self.grid
        tokens = grid[0] * grid[1] if grid else None
        return (tokens, int(self.manifest["vision"]["token_dim"])) if tokens else ()

    def _array(self, shard: int, what: str) -> _ArrayFile:
        key = (shard, what)
        if key not in self._arrays:
            self._arrays[key] = _read_header(shard_file(self.path, shard, what),
                                             int(self.shard_rows[shard]), self._row_shape(what),
                                             self.manifest["dtype"])
        return self._arrays[key]

    def _size_bytes(self) -> int:
        """Bytes of all shard arrays (images, texts, tokens) on disk."""
        return sum(path.stat().st_size for path in shard_dir(self.path).glob("*.npy"))

    def _copy_mapped_rows(self, array: _ArrayFile, local: np.ndarray, out: np.ndarray) -> None:
        """Copy sorted ``local`` rows of one shard into ``out`` from its (cached) mapping."""
        mapped = self._maps.get(array.path)
        if mapped is None:
            mapped = np.memmap(array.path, dtype=array.dtype, mode="r", offset=array.offset,
                               shape=array.shape)
            self._maps[array.path] = mapped
        np.take(mapped, local, axis=0, out=out)

    def _read_rows(self, array: _ArrayFile, local: np.ndarray, out: np.ndarray) -> None:
        """Read sorted ``local`` rows of one shard into ``out``: one pread per consecutive run."""
        breaks = np.flatnonzero(np.diff(local) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        stops = np.concatenate([breaks, [len(local)]]).tolist()
        flat = out.reshape(len(local), -1).view(np.uint8)
        fd = os.open(array.path, os.O_RDONLY)
        try:
            for start, stop in zip(starts, stops):
                target = flat[start:stop].reshape(-1)
                position = array.offset + int(local[start]) * array.row_bytes
                while target.size:  # a read may return less than asked (e.g. over 2 GiB)
                    count = os.preadv(fd, [target], position)
                    if count == 0:
                        raise StoreError(f"{array.path}: ended early; the file changed while "
                                         "in use")
                    target, position = target[count:], position + count
        finally:
            os.close(fd)

    def _gather(self, rows: np.ndarray, what: str) -> np.ndarray:
        """Rows in the order asked, read in ascending order. Reads from the page cache run in
        this thread (threads would only contend for the GIL); once a gather is slow enough to
        be waiting on the disk, the next ones spread their shards over READ_THREADS threads."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range [0, {len(self)})")
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        shards = np.searchsorted(self.offsets, ascending, side="right") - 1
        first = self._array(int(shards[0]) if rows.size else 0, what)
        gathered = np.empty((rows.size, *first.shape[1:]), dtype=first.dtype)
        cuts = np.flatnonzero(np.diff(shards)) + 1
        spans = list(zip([0, *cuts.tolist()], [*cuts.tolist(), rows.size]))

        def read(part: list[tuple[int, int]], mapped: bool = False) -> None:
            copy = self._copy_mapped_rows if mapped else self._read_rows
            for start, stop in part:
                shard = int(shards[start])
                copy(self._array(shard, what), ascending[start:stop] - self.offsets[shard],
                     gathered[start:stop])

        threads = min(READ_THREADS if self._from_disk else 1, len(spans))
        started = time.perf_counter()
        if threads > 1:  # reads release the GIL: several in flight hide the disk's latency
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(read, [spans[i::threads] for i in range(threads)]))
        elif rows.size:
            read(spans, mapped=self._mapped and not self._from_disk)
        if rows.size:
            self._from_disk = (time.perf_counter() - started) / rows.size > COLD_ROW_S
        result = np.empty_like(gathered)
        result[order] = gathered
        return result

    def images(self, rows: np.ndarray) -> np.ndarray:
        """Pooled image features of ``rows`` (len(rows) x image_dim, stored dtype)."""
        return self._gather(rows, "images")

    def texts(self, rows: np.ndarray, kind: str | None = None) -> np.ndarray:
        """Caption features of ``rows``: len x K x D, or len x D for one ``kind``."""
        texts = self._gather(rows, "texts")
        return texts if kind is None else texts[:, self.caption_kinds.index(kind)]

    def tokens(self, rows: np.ndarray) -> np.ndarray:
        """Token maps of ``rows`` (len x N x D_tok); StoreError if encoded without --tokens."""
        if not self.has_tokens:
            raise StoreError(f"{self.path} has no token maps; re-encode with --tokens")
        return self._gather(rows, "tokens")

    # --- metadata ----------------------------------------------------------------------------
    @cached_property
    def _meta(self) -> list[dict[str, Any]]:
        return [read_json(shard_file(self.path, s["index"], "meta"))
                for s in self.manifest["shards"]]

    @cached_property
    def labels(self) -> np.ndarray:
        return np.array([x for m in self._meta for x in m["labels"]], dtype=np.int64)

    @cached_property
    def keys(self) -> list[str]:
        return [x for m in self._meta for x in m["keys"]]

    @cached_property
    def source_indices(self) -> np.ndarray:
        """The source item index of every row (shard s covers items s*shard_size onwards, less
        the items skipped as bad)."""
        size = int(self.manifest["shard_size"])
        indices = []
        for meta in self._meta:
            bad = {b["index"] for b in meta["bad"]}
            start = meta["shard"] * size
            span = range(start, start + meta["rows"] + len(bad))
            indices += [i for i in span if i not in bad]
        return np.array(indices, dtype=np.int64)

    @cached_property
    def captions(self) -> list[list[str]]:
        """captions[row][k] is the text of caption kind k of image row."""
        return [x for m in self._meta for x in m["captions"]]

    def summary(self) -> dict[str, Any]:
        """A short description for `vlalign info` (JSON-friendly)."""
        m = self.manifest
        return {
            "path": str(self.path), "dataset": m["dataset"]["name"],
            "fingerprint": m["dataset"]["fingerprint"], "items": m["dataset"]["items"],
            "rows": len(self), "bad_items": m["bad_items"], "shards": len(m["shards"]),
            "vision": m["vision"]["identity"], "image_dim": self.image_dim,
            "text": m["text"]["identity"], "text_dim": self.text_dim,
            "caption_kinds": self.caption_kinds, "caption_counts": self.caption_counts,
            "tokens": self.has_tokens,
            "grid": list(self.grid) if self.grid else None, "dtype": m["dtype"],
            "size_mb": round(sum(p.stat().st_size for p in self.path.rglob("*")
                                 if p.is_file()) / 2**20, 1),
        }
