"""Evaluation dataset specs -> readers: benchmark schemes here, everything else ``create_source``.

Spec syntax: ``SCHEME:ROOT[?KEY=VALUE[&KEY=VALUE...]][[START:STOP]]``

=====================  ============================================  =========================
spec                   reads                                         options
=====================  ============================================  =========================
``imagenet:ROOT``      ImageNet-1k val, ``ROOT/<wnid>/<image>``      none
``coco:ROOT``          Karpathy COCO (``dataset_coco.json``)         ``split``: test (default),
                                                                     val, train, restval
``flickr30k:ROOT``     Karpathy Flickr30k                            ``split``: test (default),
                       (``dataset_flickr30k.json``)                  val, train
``winoground:ROOT``    Winoground (``data/examples.jsonl``)          none
``mmvp:ROOT``          MMVP-VLM (``Questions.csv``)                  none
``voc:ROOT``           VOC 2012 seg., VOC20 (background ignored)     ``split``: val (default),
                                                                     train, trainval
``voc21:ROOT``         VOC 2012 seg., 21 classes with background     as ``voc``
``ade20k:ROOT``        ADE20K SceneParsing, 150 classes              ``split``: validation
                                                                     (default), training
``emoji-pairs:SPLIT``  offline Winoground-style emoji pairs          ``per_tag`` (100), ``seed``
``emoji-mmvp:SPLIT``   the same pairs as MMVP-VLM statements         as ``emoji-pairs``
``emoji-canvas:SPLIT`` offline segmentation canvases of emoji        ``by`` (name|subcategory),
                                                                     ``count`` (200), ``classes``
                                                                     (20), ``seed``, ``size``
=====================  ============================================  =========================

e.g. ``coco:/data/coco?split=val``, ``voc:/data/VOCdevkit[:100]``. A trailing ``[START:STOP]``
keeps that slice of items (Python slice semantics), as for ordinary sources. A relative ``ROOT``
that does not exist is also tried under ``data_root``. Any other scheme (``fashion-mnist:test``,
``emoji:test``, ``digits:test``, ``folder:``, ``csv:``, ...) goes to ``vlalign.data.create_source``
unchanged, so ``create_benchmark`` resolves every evaluation dataset spec.

To add a scheme, add ``BENCHMARKS["name"] = builder`` where ``builder(rest, options, data_root)``
gets the text between ``:`` and ``?`` (a path or split), the parsed options (a dict) and the data
root, validates the options (``take_options``) and returns the reader.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlalign.data.benchmarks.ade20k import ADE20K
from vlalign.data.benchmarks.emoji_canvas import EmojiCanvases
from vlalign.data.benchmarks.emoji_pairs import EmojiPairs
from vlalign.data.benchmarks.imagenet import ImageNetVal
from vlalign.data.benchmarks.karpathy import KarpathyCaptions
from vlalign.data.benchmarks.mmvp import MMVP
from vlalign.data.benchmarks.voc import VOCSegmentation
from vlalign.data.benchmarks.winoground import Winoground
from vlalign.data.registry import DATASETS, Subset, create_source
from vlalign.errors import UserError

# A reader: a Source, PairSet or SegmentationSet.
Benchmark = Any
Builder = Callable[[str, dict[str, str], Path], Benchmark]
_SLICE = re.compile(r"\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]$")


def take_options(scheme: str, options: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    """``defaults`` updated by ``options``; a UserError for any option not in ``defaults``."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise UserError(f"unknown option {unknown[0]!r} for {scheme}; valid: {valid}")
    return {**defaults, **options}


def resolve_root(rest: str, data_root: Path) -> Path:
    """``rest`` as a path; a relative one that does not exist is tried under ``data_root``."""
    path = Path(rest).expanduser()
    if not path.is_absolute() and not path.exists() and (data_root / path).exists():
        return data_root / path
    return path


def _imagenet(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
    take_options("imagenet", options, {})
    return ImageNetVal(resolve_root(rest, data_root))


def _karpathy(dataset: str) -> Builder:
    def build(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
        split = take_options(dataset, options, {"split": "test"})["split"]
        return KarpathyCaptions(resolve_root(rest, data_root), dataset, split)
    return build


def _winoground(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
    take_options("winoground", options, {})
    return Winoground(resolve_root(rest, data_root))


def _mmvp(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
    take_options("mmvp", options, {})
    return MMVP(resolve_root(rest, data_root))


def _voc(background: bool) -> Builder:
    def build(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
        scheme = "voc21" if background else "voc"
        split = take_options(scheme, options, {"split": "val"})["split"]
        return VOCSegmentation(resolve_root(rest, data_root), split, background=background)
    return build


def _ade20k(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
    split = take_options("ade20k", options, {"split": "validation"})["split"]
    return ADE20K(resolve_root(rest, data_root), split)


def _int_options(scheme: str, options: dict[str, str], defaults: dict[str, str],
                 numbers: tuple[str, ...]) -> dict[str, Any]:
    """``take_options`` with the named options converted to int (a UserError if not)."""
    values: dict[str, Any] = take_options(scheme, options, defaults)
    for key in numbers:
        if not values[key].lstrip("-").isdigit():
            raise UserError(f"option {key}={values[key]!r} of {scheme} must be an integer")
        values[key] = int(values[key])
    return values


def _emoji_pairs(style: str) -> Builder:
    def build(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
        scheme = "emoji-pairs" if style == "names" else "emoji-mmvp"
        values = _int_options(scheme, options, {"per_tag": "100", "seed": "0"},
                              ("per_tag", "seed"))
        return EmojiPairs(data_root / "emoji", rest, style, **values)
    return build


def _emoji_canvas(rest: str, options: dict[str, str], data_root: Path) -> Benchmark:
    defaults = {"by": "name", "count": "200", "classes": "20", "seed": "0", "size": "224"}
    values = _int_options("emoji-canvas", options, defaults, ("count", "classes", "seed", "size"))
    return EmojiCanvases(data_root / "emoji", rest, **values)


# scheme -> builder(rest, options, data_root).
BENCHMARKS: dict[str, Builder] = {
    "emoji-pairs": _emoji_pairs("names"),
    "emoji-mmvp": _emoji_pairs("statements"),
    "emoji-canvas": _emoji_canvas,
    "imagenet": _imagenet,
    "coco": _karpathy("coco"),
    "flickr30k": _karpathy("flickr30k"),
    "winoground": _winoground,
    "mmvp": _mmvp,
    "voc": _voc(background=False),
    "voc21": _voc(background=True),
    "ade20k": _ade20k,
}


class BenchmarkSubset(Subset):
    """Items ``start:stop`` of any reader (pair and segmentation sets included)."""

    def __init__(self, source: Benchmark, start: int | None = None,
                 stop: int | None = None) -> None:
        self.source = source
        self.start, self.stop, _ = slice(start, stop).indices(len(source))
        self.stop = max(self.stop, self.start)
        bounds = f"{'' if start is None else start}:{'' if stop is None else stop}"
        self.name = f"{source.name}[{bounds}]"
        self.class_names = getattr(source, "class_names", None)
        base = getattr(source, "fingerprint", source.name)
        self.fingerprint = hashlib.sha1(f"{base}[{self.start}:{self.stop}]".encode()).hexdigest()


def parse_options(spec: str, text: str) -> dict[str, str]:
    """``key=value&key=value`` -> dict; a UserError naming the spec when malformed."""
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, equals, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or not value:
            raise UserError(f"bad option {part!r} in {spec!r}; expected KEY=VALUE")
        if key in options:
            raise UserError(f"option {key!r} given twice in {spec!r}")
        options[key] = value
    return options


def create_benchmark(spec: str, data_root: str | Path = "data") -> Benchmark:
    """The reader a spec names (see the module docstring), else ``create_source(spec)``."""
    text = spec.strip()
    scheme, colon, _ = text.partition(":")
    scheme = scheme.strip().lower()
    if scheme not in BENCHMARKS:
        if scheme not in DATASETS:
            valid = ", ".join([*BENCHMARKS, *DATASETS])
            raise UserError(f"unknown dataset {scheme!r} in {spec!r}; valid: {valid}")
        return create_source(text, data_root)
    match = _SLICE.search(text)
    base = text[: match.start()] if match else text
    rest, _, option_text = base.partition(":")[2].partition("?")
    if not colon or not rest.strip():
        raise UserError(f"dataset spec {spec!r} needs {scheme}:ROOT")
    bench = BENCHMARKS[scheme](rest.strip(), parse_options(spec, option_text), Path(data_root))
    if match is None:
        return bench
    start, stop = (int(bound) if bound else None for bound in match.groups())
    return BenchmarkSubset(bench, start, stop)
