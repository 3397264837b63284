"""Import precomputed embeddings (clip-retrieval / embedding-reader layout) as a feature store.

The input folder holds, for k = 0, 1, 2, ... (read in numeric order: 2 before 10)::

    DIR/img_emb/img_emb_{k}.npy          n_k x D_img image embeddings, float16 or float32
    DIR/text_emb/text_emb_{k}.npy        n_k x D_txt caption embeddings, row i = image row i
    DIR/metadata/metadata_{k}.parquet    n_k rows: ``caption`` (required), ``key``, ``url`` or
                                         ``image_path`` (the row's key, if present), ...

Row r of the store is row r of the three concatenated; it is cut into shards of ``shard_size``
rows like an encoded store (``layout.py``), with one caption kind (``raw``). Shards are written
atomically, each marked complete by its meta file last, and the manifest says ``importing`` until
every shard is there: an interrupted import is never mistaken for a store, and rerunning the same
command resumes it (complete shards are kept after their checksums are checked).

The store records what is known of the encoders: the spec given (``--vision-spec``,
``--text-spec``) and an identity ``imported:SPEC`` (``imported:DIR#FINGERPRINT`` without a spec),
which equals no vlalign encoder's identity, and no image transform (``preprocess``: null). So
training SAIL on it works (and mixes it with other imports of the same specs), while using it
where an encoder's own features are expected (``encode`` into it, a probe's or eval's stores,
UTA targets) is refused or passed over, never silently mixed.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from vlalign.data.base import RAW
from vlalign.errors import DataError, StoreError, UserError
from vlalign.store.encode import (
    DTYPES,
    _shard_complete,
    cast_features,
    check_same_identity,
    start_manifest,
)
from vlalign.store.layout import BAD_ITEMS, FORMAT_VERSION, MANIFEST, shard_file
from vlalign.utils.files import atomic_save_npy, atomic_write_bytes, atomic_write_json, read_json
from vlalign.utils.optional import require

log = logging.getLogger(__name__)

PARTS = (("img_emb", "img_emb_{}.npy"), ("text_emb", "text_emb_{}.npy"),
         ("metadata", "metadata_{}.parquet"))
CAPTION_COLUMN = "caption"
KEY_COLUMNS = ("key", "image_path", "url")  # the first present names a row
LAYOUT = "embedding-reader"


@dataclass
class ImportOptions:
    """Knobs of an import; all but ``progress`` are part of the store's identity."""

    shard_size: int = 4096
    dtype: str | None = None  # float16 | float32; None: the inputs' (float32 if any is)
    vision_spec: str | None = None  # the encoder that made img_emb, if known
    text_spec: str | None = None  # the encoder that made text_emb, if known
    progress: bool = True


@dataclass(frozen=True)
class _Part:
    """One input shard: its three files, rows, dims and dtypes."""

    index: int
    images: Path
    texts: Path
    metadata: Path
    rows: int
    image_dim: int
    text_dim: int
    dtypes: tuple[str, str]


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read = (npy_format.read_array_header_1_0 if version == (1, 0)
                    else npy_format.read_array_header_2_0)
            shape, fortran, dtype = read(handle)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npy file ({error})") from None
    if fortran or len(shape) != 2 or dtype.name not in DTYPES:
        raise DataError(f"{path}: holds {dtype} {tuple(shape)}{' (Fortran order)' * fortran}; "
                        "expected a 2-D C-order float16 or float32 array (rows x dim)")
    return tuple(shape), dtype


def scan(root: Path) -> list[_Part]:
    """The input shards of ``root``, checked: the same shard numbers in the three folders, equal
    row counts per shard, one dim per side, a caption column. Errors are one line naming the
    file."""
    pq = require("pyarrow.parquet", "data")
    if not root.is_dir():
        raise UserError(f"embedding folder not found: {root}")
    found: list[dict[int, Path]] = []
    for folder, pattern in PARTS:
        where = root / folder
        if not where.is_dir():
            raise UserError(f"{where} is missing; expected {root}/{{img_emb,text_emb,metadata}}/ "
                            "as clip-retrieval writes them")
        regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")
        numbered = {int(m.group(1)): p for p in where.iterdir() if (m := regex.match(p.name))}
        if not numbered:
            raise UserError(f"{where} holds no {pattern.format('N')} files")
        found.append(numbered)
    numbers = sorted(set().union(*found))
    for (folder, pattern), numbered in zip(PARTS, found):
        missing = next((k for k in numbers if k not in numbered), None)
        if missing is not None:
            other = next(n[missing] for n in found if missing in n)
            raise DataError(f"{root / folder / pattern.format(missing)} is missing ({other} has "
                            "no counterpart); every shard needs all three files")
    parts: list[_Part] = []
    for k in numbers:
        images, texts, metadata = (numbered[k] for numbered in found)
        (rows, image_dim), image_dtype = _npy_header(images)
        (text_rows, text_dim), text_dtype = _npy_header(texts)
        try:
            meta = pq.ParquetFile(metadata)
        except Exception as error:  # noqa: BLE001  (pyarrow raises several kinds)
            raise DataError(f"{metadata}: not a readable parquet file ({error})") from None
        if CAPTION_COLUMN not in meta.schema_arrow.names:
            raise DataError(f"{metadata}: no {CAPTION_COLUMN!r} column (columns: "
                            f"{', '.join(meta.schema_arrow.names)})")
        for path, count in ((texts, text_rows), (metadata, meta.metadata.num_rows)):
            if count != rows:
                raise DataError(f"{path} has {count} rows, {images} has {rows}; shard {k}'s "
                                "files must hold the same rows")
        first = parts[0] if parts else None
        for path, dim, first_dim, first_path in (
                (images, image_dim, first and first.image_dim, first and first.images),
                (texts, text_dim, first and first.text_dim, first and first.texts)):
            if first is not None and dim != first_dim:
                raise DataError(f"{path} holds {dim}-d rows, {first_path} {first_dim}-d; one "
                                "encoder per side")
        parts.append(_Part(k, images, texts, metadata, rows, image_dim, text_dim,
                           (image_dtype.name, text_dtype.name)))
    if not sum(p.rows for p in parts):
        raise DataError(f"{root}: the embedding files hold no rows")
    return parts


def _fingerprint(root: Path, parts: list[_Part]) -> str:
    digest = sha1(b"embeddings\n")
    for part in parts:
        for path in (part.images, part.texts, part.metadata):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def import_identity(root: Path, parts: list[_Part], options: ImportOptions) -> dict[str, Any]:
    """Everything that determines the store's content: a resumed import must match it."""
    fingerprint = _fingerprint(root, parts)
    dtype = options.dtype or ("float16" if all(d == "float16" for p in parts for d in p.dtypes)
                              else "float32")
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    unknown = f"imported:{root.resolve()}#{fingerprint[:12]}"

    def side(spec: str | None, dim: int) -> dict[str, Any]:
        return {"spec": spec or "imported", "dim": dim,
                "identity": f"imported:{spec}" if spec else unknown}

    return {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": f"embeddings:{root}", "fingerprint": fingerprint,
                    "items": sum(p.rows for p in parts), "class_names": None},
        "vision": {**side(options.vision_spec, parts[0].image_dim), "token_dim": None,
                   "preprocess": None},
        "text": side(options.text_spec, parts[0].text_dim),
        "caption_kinds": [RAW],
        "tokens": False,
        "dtype": dtype,
        "shard_size": options.shard_size,
        "imported": {"from": str(root.resolve()), "layout": LAYOUT, "input_shards": len(parts)},
    }


def _check_or_start(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.exists():
        manifest = read_json(path)
        if not manifest.get("imported"):
            raise StoreError(f"{out} holds a store encoded by vlalign, not an import; choose "
                             "another --out")
        check_same_identity(out, manifest, identity, "an import")
        return manifest
    return start_manifest(out, identity, "importing")


class _Rows:
    """Rows [start, stop) of the concatenated inputs: features memory-mapped, metadata read
    one input shard at a time (the shard in use is kept)."""

    def __init__(self, parts: list[_Part]):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.rows for p in parts])
        self._meta: tuple[int, list[str], list[str]] | None = None

    def _metadata(self, slot: int) -> tuple[list[str], list[str]]:
        if self._meta is None or self._meta[0] != slot:
            pq = require("pyarrow.parquet", "data")
            part = self.parts[slot]
            names = pq.ParquetFile(part.metadata).schema_arrow.names
            key = next((c for c in KEY_COLUMNS if c in names), None)
            table = pq.read_table(part.metadata, columns=[CAPTION_COLUMN, *([key] if key else [])])
            captions = ["" if c is None else str(c)
                        for c in table.column(CAPTION_COLUMN).to_pylist()]
            keys = ([f"{part.index}/{i}" if k is None else str(k)
                     for i, k in enumerate(table.column(key).to_pylist())] if key
                    else [f"{part.index}/{i}" for i in range(part.rows)])
            self._meta = (slot, captions, keys)
        return self._meta[1], self._meta[2]

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """(images n x D, texts n x D, captions, keys) of rows [start, stop)."""
        images, texts, captions, keys = [], [], [], []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for slot in range(first, len(self.parts)):
            lo, hi = self.starts[slot], self.starts[slot + 1]
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            part = self.parts[slot]
            for path, into in ((part.images, images), (part.texts, texts)):
                rows = np.load(path, mmap_mode="r", allow_pickle=False)[a:b]
                bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
                if bad.size:
                    raise DataError(f"{path}: row {a + int(bad[0])} holds inf or NaN")
                into.append(np.asarray(rows, np.float32))
            shard_captions, shard_keys = self._metadata(slot)
            captions += shard_captions[a:b]
            keys += shard_keys[a:b]
        return np.concatenate(images), np.concatenate(texts), captions, keys


def import_embeddings(root: str | Path, out: str | Path,
                      options: ImportOptions | None = None) -> dict[str, Any]:
    """Write (or finish) a feature store at ``out`` from the embeddings in ``root``; returns
    its manifest. See the module docstring."""
    options = options or ImportOptions()
    if options.shard_size < 1:
        raise UserError(f"shard size must be at least 1, not {options.shard_size}")
    root, out = Path(root), Path(out)
    parts = scan(root)
    identity = import_identity(root, parts, options)
    manifest = _check_or_start(out, identity)
    if manifest.get("status") == "complete":
        log.info("%s is already complete", out)
        return manifest
    total, size = identity["dataset"]["items"], options.shard_size
    num_shards = max(1, -(-total // size))
    todo = [k for k in range(num_shards) if not _shard_complete(out, k)]
    log.info("importing %s: %d rows, %d input shards -> %d store shards (%d to do)", root,
             total, len(parts), num_shards, len(todo))
    rows, dtype, started = _Rows(parts), DTYPES[identity["dtype"]], time.perf_counter()
    bar = tqdm(total=sum(min(total, (k + 1) * size) - k * size for k in todo), unit="row",
               disable=not options.progress, desc=f"import {root.name}", dynamic_ncols=True)
    for shard in todo:
        start, stop = shard * size, min(total, (shard + 1) * size)
        images, texts, captions, keys = rows.read(start, stop)
        sha = {"images": atomic_save_npy(shard_file(out, shard, "images"),
                                         cast_features(images, dtype, "image")),
               "texts": atomic_save_npy(shard_file(out, shard, "texts"),
                                        cast_features(texts[:, None, :], dtype, "caption"))}
        meta = {"shard": shard, "rows": stop - start, "keys": keys, "labels": [-1] * len(keys),
                "captions": [[c] for c in captions], "caption_counts": {RAW: len(keys)},
                "grid": None, "bad": [], "sha256": sha}
        atomic_write_json(shard_file(out, shard, "meta"), meta)  # last: marks the shard done
        bar.update(stop - start)
    bar.close()
    shards = []
    for k in range(num_shards):
        meta = read_json(shard_file(out, k, "meta"))
        shards.append({"index": k, "rows": meta["rows"], "sha256": meta["sha256"]})
    atomic_write_bytes(out / BAD_ITEMS, b"")
    manifest = {**manifest, "status": "complete", "rows": total, "bad_items": 0, "grid": None,
                "caption_counts": {RAW: total}, "shards": shards,
                "last_run": {"rows_imported": sum(min(total, (k + 1) * size) - k * size
                                                  for k in todo),
                             "seconds": round(time.perf_counter() - started, 2)}}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
