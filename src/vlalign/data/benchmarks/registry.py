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
unchanged (those take no options, so a ``?`` stays in their paths), so ``create_benchmark``
resolves every evaluation dataset spec. Specs are parsed by ``vlalign.spec``.

To add a scheme, add ``BENCHMARKS["name"] = (builder, options)``: ``options`` declares the
options it takes (``vlalign.spec.Option``) and ``builder(rest, values, data_root)`` gets the text
between ``:`` and ``?`` (a path or split), the typed option values and the data root.
"""

from __future__ import annotations

import hashlib
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
from vlalign.spec import Grammar, Option, Value, validate_options

# A reader: a Source, PairSet or SegmentationSet.
Benchmark = Any
Builder = Callable[[str, dict[str, Value], Path], Benchmark]


def resolve_root(rest: str, data_root: Path) -> Path:
    """``rest`` as a path; a relative one that does not exist is tried under ``data_root``."""
    path = Path(rest).expanduser()
    if not path.is_absolute() and not path.exists() and (data_root / path).exists():
        return data_root / path
    return path


def _imagenet(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
    return ImageNetVal(resolve_root(rest, data_root))


def _karpathy(dataset: str) -> Builder:
    def build(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
        return KarpathyCaptions(resolve_root(rest, data_root), dataset, values["split"])
    return build


def _winoground(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
    return Winoground(resolve_root(rest, data_root))


def _mmvp(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
    return MMVP(resolve_root(rest, data_root))


def _voc(background: bool) -> Builder:
    def build(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
        return VOCSegmentation(resolve_root(rest, data_root), values["split"],
                               background=background)
    return build


def _ade20k(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
    return ADE20K(resolve_root(rest, data_root), values["split"])


def _emoji_pairs(style: str) -> Builder:
    def build(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
        return EmojiPairs(data_root / "emoji", rest, style, **values)
    return build


def _emoji_canvas(rest: str, values: dict[str, Value], data_root: Path) -> Benchmark:
    return EmojiCanvases(data_root / "emoji", rest, **values)


# Splits and groupings are checked by the readers, which know the valid ones.
PAIRS = {"per_tag": Option(100), "seed": Option(0)}
CANVAS = {"by": Option("name"), "count": Option(200), "classes": Option(20), "seed": Option(0),
          "size": Option(224)}

# scheme -> (builder(rest, values, data_root), the options it takes).
BENCHMARKS: dict[str, tuple[Builder, dict[str, Option]]] = {
    "emoji-pairs": (_emoji_pairs("names"), PAIRS),
    "emoji-mmvp": (_emoji_pairs("statements"), PAIRS),
    "emoji-canvas": (_emoji_canvas, CANVAS),
    "imagenet": (_imagenet, {}),
    "coco": (_karpathy("coco"), {"split": Option("test")}),
    "flickr30k": (_karpathy("flickr30k"), {"split": Option("test")}),
    "winoground": (_winoground, {}),
    "mmvp": (_mmvp, {}),
    "voc": (_voc(background=False), {"split": Option("val")}),
    "voc21": (_voc(background=True), {"split": Option("val")}),
    "ade20k": (_ade20k, {"split": Option("validation")}),
}
# Ordinary dataset schemes are listed too, for the message about an unknown one.
GRAMMAR = Grammar("dataset", (*BENCHMARKS, *DATASETS), options=True, slice=True,
                  usage={**dict.fromkeys(BENCHMARKS, "ROOT"),
                         **dict.fromkeys(("emoji-pairs", "emoji-mmvp", "emoji-canvas"), "SPLIT")})


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


def create_benchmark(spec: str, data_root: str | Path = "data") -> Benchmark:
    """The reader a spec names (see the module docstring), else ``create_source(spec)``."""
    if GRAMMAR.scheme(spec) not in BENCHMARKS:
        return create_source(spec, data_root)
    parsed = GRAMMAR.parse(spec)
    build, options = BENCHMARKS[parsed.scheme]
    bench = build(parsed.name, validate_options(parsed, options), Path(data_root))
    return bench if parsed.slice is None else BenchmarkSubset(bench, *parsed.slice)
