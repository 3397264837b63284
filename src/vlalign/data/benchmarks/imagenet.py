"""ImageNet-1k validation images in the class-folder layout, labelled by the standard indices.

Expected layout (what torchvision's ``ImageFolder`` reads for ImageNet val, e.g. after the usual
``valprep.sh``)::

    ROOT/n01440764/ILSVRC2012_val_00000293.JPEG
    ROOT/n01443537/...
    ...                                   (up to 1000 folders named by WordNet id)

``ROOT`` may also be the ImageNet root holding ``val/`` (``ROOT/val/<wnid>/<image>``). Every
image file (``.JPEG``, ``.jpg``, ``.png``, ... any case) inside a wnid folder is an item; other
files in ``ROOT`` are ignored, and a folder whose name is not one of the 1000 ImageNet-1k wnids
is a UserError. The label is the wnid's position in the sorted list of the 1000 wnids (the
standard ImageNet-1k class index), so a partial copy with a few classes keeps the right labels;
``class_names`` are all 1000 names. Those are the curated names OpenAI used for CLIP's zero-shot
ImageNet classifier (the list CLIP_benchmark and open_clip use; it names two pairs of classes
alike: "missile" and "sunglasses"). They ship in ``imagenet_classes.tsv`` beside this module:
1000 lines ``wnid<TAB>name`` in index order, generated from timm's ``imagenet_synsets.txt`` and
open_clip's ``IMAGENET_CLASSNAMES`` (tests/test_eval_protocol.py compares every name with the
installed open_clip's). Zero-shot prompts are the 80 OpenAI templates, filled verbatim
(``vlalign.data.templates.IMAGENET_TEMPLATES``); the captions below are training captions.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path

from vlalign.data.base import RAW, REWRITTEN, Example
from vlalign.data.benchmarks._files import Fingerprint, require_dir
from vlalign.data.image_folder import IMAGE_SUFFIXES
from vlalign.data.images import decode_image
from vlalign.data.templates import GENERIC_TEMPLATES, class_captions
from vlalign.errors import DataError, UserError

CLASSES_FILE = "imagenet_classes.tsv"
NUM_CLASSES = 1000


@cache
def _classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The 1000 (wnids, names) in class-index order, read once from the packaged TSV."""
    text = resources.files(__package__).joinpath(CLASSES_FILE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if len(rows) != NUM_CLASSES or any(len(row) != 2 for row in rows):
        raise DataError(f"packaged {CLASSES_FILE} is damaged: expected {NUM_CLASSES} lines "
                        f"'wnid<TAB>name' (reinstall vlalign)")
    wnids, names = zip(*rows)
    return tuple(wnids), tuple(names)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, sorted: index = standard class index."""
    return list(_classes()[0])


def imagenet_class_names() -> list[str]:
    """The 1000 CLIP curated ImageNet class names in class-index order."""
    return list(_classes()[1])


class ImageNetVal:
    """ImageNet-1k val (or any subset of its class folders) as a labelled ``Source``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        given = require_dir(root, "ImageNet")
        self.root = given
        wnids, names = _classes()
        index = {wnid: i for i, wnid in enumerate(wnids)}
        folders = self._folders(given)
        if not any(f.name in index for f in folders) and (given / "val").is_dir():
            self.root = given / "val"
            folders = self._folders(self.root)
        unknown = [f.name for f in folders if f.name not in index]
        if unknown:
            raise UserError(f"{self.root / unknown[0]}: folder {unknown[0]!r} is not an "
                            f"ImageNet-1k class (expected {self.root}/<wnid>/<image>, "
                            f"wnid like n01440764)")
        self.items: list[tuple[str, int]] = []
        fingerprint = Fingerprint("imagenet")
        for folder in folders:
            label = index[folder.name]
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    relative = f"{folder.name}/{entry.name}"
                    self.items.append((relative, label))
                    fingerprint.add_file(Path(entry.path), relative)
        if not self.items:
            raise DataError(f"no images found in {self.root} (expected "
                            f"{self.root}/<wnid>/<image>.JPEG, wnid like n01440764)")
        self.class_names = list(names)
        self.name = f"imagenet:{given}"
        self.fingerprint = fingerprint.hexdigest()

    @staticmethod
    def _folders(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.items)

    def label(self, index: int) -> int:
        """Item ``index``'s class index, without decoding the image."""
        return self.items[index][1]

    def load(self, index: int) -> Example:
        """Image ``index`` with its label and two class-name captions ("a photo of a tench.")."""
        relative, label = self.items[index]
        raw, rewritten = class_captions(GENERIC_TEMPLATES, self.class_names[label], index)
        return Example(key=relative, image=decode_image(self.root / relative),
                       captions={RAW: raw, REWRITTEN: rewritten}, label=label)
