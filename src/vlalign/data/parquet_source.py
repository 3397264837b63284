"""Image-caption (and image-label) rows of Arrow tables: parquet files and Hugging Face datasets.

Both read the same columns (``TableSource``); the spec options name them, and an option left out
is found by column name:

==============  ===================================================  ===========================
option          the column of                                        found by name (first match)
==============  ===================================================  ===========================
``image``       image bytes, a ``{'bytes', 'path'}`` struct (an HF   image, img, jpg, jpeg, png,
                ``Image`` feature), or a path (relative to the       webp, image_path, path,
                parquet file's folder / the dataset folder, or to    file_name, filepath
                ``root=DIR``)
``caption``     the raw caption (a string, or a list ``[raw,         caption, raw_caption, text,
                rewritten, ...]``)                                   txt, captions
``rewritten``   the rewritten caption (SAIL's second positive)       as webdataset_source's
                                                                     REWRITTEN_FIELDS
``label``       an integer class (names from an HF ``ClassLabel``    label
                feature, else "0", "1", ...) or a class-name string
==============  ===================================================  ===========================

``caption=none``, ``rewritten=none``, ``label=none`` turn a column off. Without a caption column a
labelled table gets class-name captions (as ``folder:`` does). A ``key`` (or ``__key__``) column
names the items. Bad cells (a corrupt image, an empty caption) raise BadItem at load time, so an
encode skips, counts and lists them.

Caption, label and key columns are read once at construction (small); images are read by row
group on demand (a process keeps its last two row groups), so a table far larger than memory
works as long as its row groups are modest (HF datasets writes about 100 images per group).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.data.base import RAW, REWRITTEN, BadItem, Example
from vlalign.data.images import decode_image
from vlalign.data.templates import GENERIC_TEMPLATES, class_captions
from vlalign.data.webdataset_source import REWRITTEN_FIELDS
from vlalign.errors import DataError, UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.optional import require

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_path", "path", "file_name",
                 "filepath")
CAPTION_COLUMNS = ("caption", "raw_caption", "text", "txt", "captions")
LABEL_COLUMNS = ("label",)
KEY_COLUMNS = ("key", "__key__")
OFF = "none"
OPTIONS = {"image": Option(""), "caption": Option(""), "rewritten": Option(""),
           "label": Option(""), "root": Option("")}
ROW_GROUP_WARN_BYTES = 1 << 30  # a row group's image column above this is read whole: say so
CACHED_GROUPS = 2


@dataclass(frozen=True)
class Columns:
    """The columns a table source reads (None: absent)."""

    image: str
    caption: str | None
    rewritten: str | None
    label: str | None
    key: str | None

    def read(self) -> list[str]:
        """The columns read at construction (all but the image)."""
        return [c for c in (self.caption, self.rewritten, self.label, self.key) if c]


def resolve_columns(available: list[str], values: dict[str, Any], where: str) -> Columns:
    """The columns named by the options, else found by name; DataError naming what is missing."""
    found = ", ".join(available) or "none"

    def pick(option: str, candidates: tuple[str, ...], required: bool = False) -> str | None:
        wanted = values.get(option, "")
        if wanted == OFF and not required:
            return None
        if wanted:
            if wanted not in available:
                raise DataError(f"{where}: no column {wanted!r} ({option}=); columns: {found}")
            return wanted
        hit = next((c for c in candidates if c in available), None)
        if hit is None and required:
            raise DataError(f"{where}: no {option} column (looked for {', '.join(candidates)}); "
                            f"columns: {found}; name it with ?{option}=COLUMN")
        return hit

    image = pick("image", IMAGE_COLUMNS, required=True)
    columns = Columns(image=image, caption=pick("caption", CAPTION_COLUMNS),
                      rewritten=pick("rewritten", REWRITTEN_FIELDS),
                      label=pick("label", LABEL_COLUMNS),
                      key=next((c for c in KEY_COLUMNS if c in available), None))
    if columns.caption is None and columns.label is None:
        raise DataError(f"{where}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}) "
                        f"and no label column; columns: {found}; name it with ?caption=COLUMN")
    return columns


def feature_class_names(features: dict[str, Any] | None, column: str) -> list[str] | None:
    """Class names of an HF ``ClassLabel`` feature (``Features.to_dict()`` form), else None."""
    feature = (features or {}).get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        names = feature.get("names")
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def _labels(values: list[Any], names: list[str] | None,
            where: str) -> tuple[list[int | None], list[str]]:
    """(label per row, None for unlabelled; class names) from a label column's values."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, str) for v in present):
        classes = names or sorted(set(present))
        index = {c: i for i, c in enumerate(classes)}
        if any(v not in index for v in present):
            raise DataError(f"{where}: label values outside the class names {classes[:10]}")
        return [None if v is None else index[v] for v in values], classes
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        kinds = sorted({type(v).__name__ for v in present})
        raise DataError(f"{where}: the label column holds {', '.join(kinds)}; expected integer "
                        "classes or class-name strings (or ?label=none)")
    top = max((v for v in present if v >= 0), default=-1)
    classes = names or [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise DataError(f"{where}: label {top} but only {len(classes)} class names")
    return [v if v is not None and v >= 0 else None for v in values], classes  # HF: -1 = none


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


class TableSource(ABC):
    """Rows of a table: subclasses list the eager columns and fetch one row's image cell."""

    def _setup(self, columns: Columns, table: dict[str, list[Any]],
               features: dict[str, Any] | None, base: Path, where: str) -> None:
        """Keep the eager columns (``table``: column -> values) and the label classes."""
        self.columns, self.base = columns, base
        rows = len(next(iter(table.values()))) if table else len(self)
        self._captions = table.get(columns.caption) or [None] * rows
        self._rewritten = table.get(columns.rewritten) or [None] * rows
        self._keys = table.get(columns.key)
        self._labels: list[int | None] = [None] * rows
        self.class_names: list[str] | None = None
        if columns.label:
            self._labels, self.class_names = _labels(
                table[columns.label], feature_class_names(features, columns.label), where)

    @abstractmethod
    def __len__(self) -> int:
        """Rows in the table."""

    @abstractmethod
    def _image_cell(self, index: int) -> tuple[Any, str]:
        """Row ``index``'s image cell and where it is (for messages)."""

    def load(self, index: int) -> Example:
        """Row ``index``'s decoded image, captions and label, or BadItem saying what is wrong."""
        cell, where = self._image_cell(index)
        label = self._labels[index]
        if self.columns.caption is None:  # labelled rows without captions: class-name captions
            if label is None:
                raise BadItem(f"{where}: no label, and no caption column")
            raw, rewritten = class_captions(GENERIC_TEMPLATES, self.class_names[label], index)
        else:
            raw, rewritten = self._caption_pair(index)
            if raw is None:
                raise BadItem(f"{where}: empty or missing caption")
        captions = {RAW: raw} if rewritten is None else {RAW: raw, REWRITTEN: rewritten}
        key = self._keys[index] if self._keys is not None else None
        return Example(key=self._key(index, where) if key is None else str(key),
                       image=self._decode(cell, where), captions=captions, label=label)

    def _key(self, index: int, where: str) -> str:
        """An item's key when the table has no key column."""
        return where

    def _caption_pair(self, index: int) -> tuple[str | None, str | None]:
        value = self._captions[index]
        if isinstance(value, (list, tuple)):  # [raw, rewritten, ...]
            listed = [_text(v) for v in value] + [None, None]
            raw, rewritten = listed[0], listed[1]
        else:
            raw, rewritten = _text(value), None
        return raw, _text(self._rewritten[index]) or rewritten

    def _decode(self, cell: Any, where: str) -> Any:
        """Decode bytes, an ``{'bytes', 'path'}`` struct or a path (relative to ``base``)."""
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, (bytes, bytearray, memoryview)):
            try:
                return decode_image(bytes(cell))
            except BadItem as bad:
                raise BadItem(f"{where}: {bad}") from None
        if isinstance(cell, str) and cell.strip():
            path = Path(cell.strip()).expanduser()
            return decode_image(path if path.is_absolute() else self.base / path)
        raise BadItem(f"{where}: no image (the {self.columns.image!r} cell is "
                      f"{'empty' if cell is None else type(cell).__name__})")


def expand_parquet(pattern: str) -> list[Path]:
    """A file, a folder (every ``*.parquet`` below it) or a glob (``*``, ``**``, ``[...]``),
    in sorted order; a UserError when nothing matches."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
    elif any(c in pattern for c in "*["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    else:
        files = [path] if path.is_file() else []
    files = [f for f in files if f.is_file()]
    if not files:
        raise UserError(f"no parquet file matches {pattern!r} (a file, a folder of .parquet "
                        "files, or a * glob; '?' starts the spec's options)")
    return files


class ParquetSource(TableSource):
    """Rows of one or more parquet files, in file order (see the module docstring)."""

    def __init__(self, pattern: str, values: dict[str, Any] | None = None,
                 name: str | None = None) -> None:
        pq = require("pyarrow.parquet", "data")
        values = values or {}
        self.paths = expand_parquet(pattern)
        self._files: dict[int, Any] = {}
        self._groups: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._pid = os.getpid()
        digest = hashlib.sha1(f"parquet\n{json.dumps(values, sort_keys=True)}\n".encode())
        # (file, row group) of every row group, its first row, and the rows it holds
        self.groups: list[tuple[int, int]] = []
        self.starts: list[int] = []
        table: dict[str, list[Any]] = {}
        total, columns, features = 0, None, None
        for number, path in enumerate(self.paths):
            stat = path.stat()
            digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            try:
                handle = pq.ParquetFile(path)
            except Exception as error:  # noqa: BLE001  (pyarrow raises several kinds)
                raise DataError(f"{path}: not a readable parquet file ({error})") from None
            names = handle.schema_arrow.names
            if columns is None:
                columns = resolve_columns(names, values, str(path))
                features = _hf_features(handle.schema_arrow.metadata)
            missing = [c for c in (columns.image, *columns.read()) if c not in names]
            if missing:
                raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (the first "
                                f"file has it); columns: {', '.join(names)}")
            self._warn_large_groups(path, handle, columns.image)
            for group in range(handle.metadata.num_row_groups):
                self.groups.append((number, group))
                self.starts.append(total)
                total += handle.metadata.row_group(group).num_rows
            read = handle.read(columns=columns.read()) if columns.read() else None
            for column in columns.read():
                table.setdefault(column, []).extend(read.column(column).to_pylist())
        self.total = total
        self.starts.append(total)
        first = self.paths[0]
        self.name = name or f"parquet:{pattern}"
        self.fingerprint = digest.hexdigest()
        self._setup(columns, table, features, Path(values.get("root") or first.parent),
                    str(first))

    def __len__(self) -> int:
        return self.total

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_groups"] = {}, OrderedDict()
        return state

    @staticmethod
    def _warn_large_groups(path: Path, handle: Any, image: str) -> None:
        meta = handle.metadata
        for group in range(meta.num_row_groups):
            info = meta.row_group(group)
            size = sum(info.column(i).total_uncompressed_size for i in range(info.num_columns)
                       if info.column(i).path_in_schema.split(".")[0] == image)
            if size > ROW_GROUP_WARN_BYTES:
                log.warning("%s: row group %d holds %.1f GB of images, read whole on first use "
                            "(rewrite it with smaller row groups to use less memory)", path,
                            group, size / 2**30)
                return

    def _group(self, slot: int) -> Any:
        """The image column of row group ``slot`` (per process, the last two cached)."""
        if self._pid != os.getpid():  # forked worker: its own handles and cache
            self._files, self._groups, self._pid = {}, OrderedDict(), os.getpid()
        if slot in self._groups:
            self._groups.move_to_end(slot)
            return self._groups[slot]
        pq = require("pyarrow.parquet", "data")
        number, group = self.groups[slot]
        if number not in self._files:
            self._files[number] = pq.ParquetFile(self.paths[number])
        column = self._files[number].read_row_group(group, columns=[self.columns.image]).column(0)
        self._groups[slot] = column
        while len(self._groups) > CACHED_GROUPS:
            self._groups.popitem(last=False)
        return column

    def _image_cell(self, index: int) -> tuple[Any, str]:
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for {self.name} ({self.total} rows)")
        slot = bisect_right(self.starts, index) - 1
        number, _ = self.groups[slot]
        row = index - self.starts[slot]
        where = f"{self.paths[number].name}:{index}"
        try:
            return self._group(slot)[row].as_py(), where
        except OSError as error:
            raise BadItem(f"{where}: unreadable row group ({error})") from None


def _hf_features(metadata: dict[bytes, bytes] | None) -> dict[str, Any] | None:
    """The HF ``features`` that ``Dataset.to_parquet`` stores in the schema metadata."""
    try:
        return json.loads((metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return None


def create_parquet(spec: Spec) -> ParquetSource:
    """``parquet:PATTERN[?image=&caption=&rewritten=&label=&root=]`` (spec parsed by the
    registry)."""
    values = validate_options(spec, OPTIONS)
    return ParquetSource(spec.name, values, name=str(Spec(spec.scheme, spec.name,
                                                          options=spec.options)))
