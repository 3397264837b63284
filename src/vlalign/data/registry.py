"""Dataset specs -> sources: ``NAME:SPLIT`` or ``SCHEME:PATH``, optionally ``[start:stop]``.

These specs take no ``@stage`` or ``?options`` (``vlalign.spec``): a path may hold ``@`` and
``?`` (a webdataset glob), and colons after the first are part of it. The table schemes are the
exception: ``parquet:FILES?image=COL&caption=COL&rewritten=COL&label=COL&root=DIR`` and
``hf:PATH_OR_REPO?split=NAME&config=NAME&...`` (same column options) take ``?options``, so their
globs use ``*`` only (``vlalign.data.parquet_source``, ``vlalign.data.hf_source``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vlalign.data.base import Example, Source
from vlalign.data.digits import Digits
from vlalign.data.emoji import Emoji
from vlalign.data.fashion_mnist import FashionMNIST
from vlalign.data.files import CaptionFile
from vlalign.data.image_folder import ImageFolder
from vlalign.data.parquet_source import create_parquet
from vlalign.data.webdataset_source import WebDatasetShards
from vlalign.errors import UserError
from vlalign.spec import Grammar

SPLITS = {"fashion-mnist": ("train", "test"), "emoji": ("train", "test", "all"),
          "digits": ("train", "test")}
TABLE_SCHEMES = ("parquet", "hf")  # the schemes that take ?options
PATH_SCHEMES = ("csv", "jsonl", "folder", "wds", *TABLE_SCHEMES)
DATASETS = (*SPLITS, *PATH_SCHEMES)
_USAGE = {**{k: "|".join(v) for k, v in SPLITS.items()}, **dict.fromkeys(PATH_SCHEMES, "PATH"),
          "hf": "PATH|ORG/NAME"}
GRAMMAR = Grammar("dataset", DATASETS, slice=True, usage=_USAGE)
TABLE_GRAMMAR = Grammar("dataset", DATASETS, options=True, slice=True, usage=_USAGE)
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class Subset:
    """Items ``start:stop`` (Python slice semantics, negatives allowed) of another source."""

    def __init__(self, source: Source, start: int | None = None, stop: int | None = None) -> None:
        self.source = source
        self.start, self.stop, _ = slice(start, stop).indices(len(source))
        self.stop = max(self.stop, self.start)
        bounds = f"{'' if start is None else start}:{'' if stop is None else stop}"
        self.name = f"{source.name}[{bounds}]"
        self.class_names = source.class_names
        self.fingerprint = hashlib.sha1(
            f"{source.fingerprint}[{self.start}:{self.stop}]".encode()).hexdigest()

    def __len__(self) -> int:
        return self.stop - self.start

    def base_index(self, index: int) -> int:
        """The wrapped source's index of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} items)")
        return self.start + index

    def load(self, index: int) -> Example:
        """Item ``index`` of the slice."""
        return self.source.load(self.base_index(index))


def create_source(spec: str, data_root: str | Path = "data") -> Source:
    """Build the source a spec names, e.g. ``fashion-mnist:train[:10000]`` or ``csv:pairs.csv``."""
    grammar = TABLE_GRAMMAR if GRAMMAR.scheme(spec) in TABLE_SCHEMES else GRAMMAR
    parsed = grammar.parse(spec)
    if parsed.scheme == "parquet":
        source: Source = create_parquet(parsed)
    elif parsed.scheme == "hf":
        from vlalign.data.hf_source import create_hf  # imports datasets: only when asked

        source = create_hf(parsed)
    else:
        source = _build(parsed.scheme, parsed.name, Path(data_root))
    return source if parsed.slice is None else Subset(source, *parsed.slice)


def _build(scheme: str, rest: str, data_root: Path) -> Source:
    if scheme in SPLITS and rest not in SPLITS[scheme]:
        raise UserError(f"unknown {scheme} split {rest!r}; valid: {', '.join(SPLITS[scheme])}")
    if scheme == "fashion-mnist":
        root = data_root / "fashion-mnist"
        if not root.is_dir() and SYSTEM_FASHION_MNIST.is_dir():
            root = SYSTEM_FASHION_MNIST
        return FashionMNIST(root, rest)
    if scheme == "emoji":
        return Emoji(data_root / "emoji", rest)
    if scheme == "digits":
        return Digits(rest)
    if scheme in ("csv", "jsonl"):
        fmt = "tsv" if scheme == "csv" and rest.lower().endswith(".tsv") else scheme
        return CaptionFile(rest, fmt)
    if scheme == "folder":
        return ImageFolder(rest)
    return WebDatasetShards(rest)


def source_summary(source: Source) -> dict[str, Any]:
    """Name, length, class names and fingerprint: what a store manifest or report records."""
    return {"name": source.name, "len": len(source), "classes": source.class_names,
            "fingerprint": source.fingerprint}
