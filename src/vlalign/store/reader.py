"""Read a feature store by random access, with memory bounded by the rows asked for.

Arrays are memory-mapped per shard; gathering a batch touches only its rows. Captions, keys and
labels live in the small per-shard meta files and are loaded on first use.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vlalign.errors import StoreError
from vlalign.store.layout import MANIFEST, PROMPTS, shard_file
from vlalign.utils.files import read_json, sha256_file


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
            raise StoreError(f"{self.path} is incomplete (status {self.manifest.get('status')!r});"
                             " rerun the same `vlalign encode` command to finish it")
        self.shard_rows = np.array([s["rows"] for s in self.manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)])
        self._maps: dict[tuple[int, str], np.ndarray] = {}
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

    @property
    def has_tokens(self) -> bool:
        return bool(self.manifest["tokens"])

    @property
    def grid(self) -> tuple[int, int] | None:
        grid = self.manifest.get("grid")
        return tuple(grid) if grid else None

    @property
    def backbones(self) -> tuple[str, str]:
        """(vision identity, text identity): stores can be mixed only when these match."""
        return self.manifest["vision"]["identity"], self.manifest["text"]["identity"]

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest["dataset"].get("class_names")

    def class_prompts(self) -> np.ndarray | None:
        """C x T x D text features of the class prompts, or None for unlabelled data."""
        if not self.manifest.get("prompts_sha256"):
            return None
        return np.load(self.path / PROMPTS, allow_pickle=False)

    def verify(self) -> None:
        """Check every shard file against the manifest's sha256; StoreError names the first bad."""
        for shard in self.manifest["shards"]:
            for what, digest in shard["sha256"].items():
                path = shard_file(self.path, shard["index"], what)
                if not path.exists() or sha256_file(path) != digest:
                    raise StoreError(f"{path}: checksum mismatch or missing file; the store is "
                                     "corrupt — re-encode it")

    # --- rows --------------------------------------------------------------------------------
    def _array(self, shard: int, what: str) -> np.ndarray:
        key = (shard, what)
        if key not in self._maps:
            path = shard_file(self.path, shard, what)
            try:
                self._maps[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise StoreError(f"{path}: cannot read ({error}); re-encode the store") from None
        return self._maps[key]

    def _gather(self, rows: np.ndarray, what: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range [0, {len(self)})")
        shards = np.searchsorted(self.offsets, rows, side="right") - 1
        first = self._array(int(shards[0]) if rows.size else 0, what)
        result = np.empty((rows.size, *first.shape[1:]), dtype=first.dtype)
        for shard in np.unique(shards):
            mask = shards == shard
            local = rows[mask] - self.offsets[shard]
            order = np.argsort(local, kind="stable")  # ascending reads are kind to the disk
            result[np.flatnonzero(mask)[order]] = self._array(int(shard), what)[local[order]]
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
            "caption_kinds": self.caption_kinds, "tokens": self.has_tokens,
            "grid": list(self.grid) if self.grid else None, "dtype": m["dtype"],
            "size_mb": round(sum(p.stat().st_size for p in self.path.rglob("*")
                                 if p.is_file()) / 2**20, 1),
        }
