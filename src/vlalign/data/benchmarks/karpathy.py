"""COCO and Flickr30k image-text retrieval sets in Karpathy's split JSON (the standard 5k/1k tests).

Expected layout for COCO (``dataset="coco"``)::

    ROOT/dataset_coco.json          (or ROOT/annotations/dataset_coco.json)
    ROOT/val2014/COCO_val2014_000000391895.jpg
    ROOT/train2014/...              (only the folders the chosen split uses are needed)

and for Flickr30k (``dataset="flickr30k"``)::

    ROOT/dataset_flickr30k.json     (or ROOT/annotations/dataset_flickr30k.json)
    ROOT/flickr30k-images/1000092795.jpg   (else ROOT/images/<filename>, else ROOT/<filename>)

``ROOT`` may also be the JSON file itself; images then resolve against its folder. The JSON is
``{"images": [{"filename", "split", "sentences": [{"raw", "tokens", ...}, ...], "imgid",
"filepath" (COCO only), ...}], "dataset"}``; an image is ``ROOT/<filepath>/<filename>`` for
COCO and found as above for Flickr30k. ``split`` is one of ``test`` (the standard evaluation: 5000
COCO / 1000 Flickr30k images), ``val``, ``train`` or ``restval`` (COCO only); items keep the
JSON's order. Each item's captions are all its sentences' ``raw`` text, stripped, as
``{"0": first, "1": second, ...}`` (5 per image, a few COCO images have 6 or 7); labels are None.
Retrieval uses every caption of every test image, repeats included, as CLIP_benchmark does
(its ``mscoco_captions`` reads all annotations of the Karpathy test images; the official SAIL
script instead keeps the first 5 captions of COCO val2017, a different set of 5000 images).
A missing JSON, invalid JSON or an entry without ``filename``/``sentences`` is a UserError; a
missing or corrupt image raises BadItem when loaded (a DataError if no image of the split exists).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlalign.data.base import BadItem, Example
from vlalign.data.benchmarks._files import Fingerprint, first_existing, read_bytes, read_text
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

DATASETS = ("coco", "flickr30k")
SPLITS = {"coco": ("test", "val", "train", "restval"), "flickr30k": ("test", "val", "train")}
FLICKR_IMAGE_DIRS = ("flickr30k-images", "images")


class KarpathyCaptions:
    """One split of Karpathy's COCO or Flickr30k JSON as a captioned ``Source``."""

    class_names = None

    def __init__(self, root: str | os.PathLike[str], dataset: str = "coco",
                 split: str = "test") -> None:
        if dataset not in DATASETS:
            raise UserError(f"unknown Karpathy dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        if split not in SPLITS[dataset]:
            raise UserError(f"unknown {dataset} split {split!r}; "
                            f"valid: {', '.join(SPLITS[dataset])}")
        self.dataset, self.split = dataset, split
        self.json_path = _find_json(Path(root), dataset)
        self.root = Path(root) if Path(root).is_dir() else self.json_path.parent
        data = read_bytes(self.json_path)
        entries = _parse(self.json_path, read_text(self.json_path, data))
        self.items: list[tuple[str, list[str]]] = []  # (image path relative to root, captions)
        for number, entry in enumerate(entries):
            if entry.get("split") == split:
                self.items.append((_relative(self.json_path, number, entry, dataset),
                                   _sentences(self.json_path, number, entry)))
        if not self.items:
            raise DataError(f"{self.json_path}: no images with \"split\": {split!r}")
        if dataset == "flickr30k":
            self.image_dir = self._flickr_image_dir()
        else:
            self.image_dir = self.root
        fingerprint = Fingerprint(f"karpathy:{dataset}:{split}")
        fingerprint.add_bytes(data)
        found = sum(fingerprint.add_file(self.image_dir / relative, relative)
                    for relative, _ in self.items)
        if not found:
            raise DataError(f"no {dataset} {split} images found: expected e.g. "
                            f"{self.image_dir / self.items[0][0]}")
        suffix = "" if split == "test" else f"?split={split}"
        self.name = f"{dataset}:{Path(root)}{suffix}"
        self.fingerprint = fingerprint.hexdigest()

    def _flickr_image_dir(self) -> Path:
        first = self.items[0][0]
        candidates = [self.root / name for name in FLICKR_IMAGE_DIRS] + [self.root]
        with_image = first_existing([folder / first for folder in candidates])
        if with_image is not None:
            return with_image.parent
        return first_existing(candidates[:-1]) or self.root

    def __len__(self) -> int:
        return len(self.items)

    def captions(self, index: int) -> list[str]:
        """All captions of image ``index`` (no image decoding)."""
        return list(self.items[index][1])

    def image_path(self, index: int) -> Path:
        """Where image ``index`` is read from."""
        return self.image_dir / self.items[index][0]

    def load(self, index: int) -> Example:
        """Image ``index`` with ``captions = {"0": first, "1": second, ...}`` and no label."""
        relative, sentences = self.items[index]
        if not sentences:
            raise BadItem(f"{self.json_path}: image {relative} has no non-empty sentence")
        return Example(key=relative, image=decode_image(self.image_dir / relative),
                       captions={str(k): text for k, text in enumerate(sentences)})


def caption_list(source: Any, index: int) -> list[str] | None:
    """Every caption of item ``index`` of a retrieval benchmark (through ``[start:stop]``
    slices), or None when ``source`` has no caption list (a training-style source)."""
    while not hasattr(source, "captions") and hasattr(source, "base_index"):
        index, source = source.base_index(index), source.source
    return source.captions(index) if hasattr(source, "captions") else None


def _find_json(root: Path, dataset: str) -> Path:
    name = f"dataset_{dataset}.json"
    if root.is_file():
        return root
    if not root.is_dir():
        raise UserError(f"{dataset} root not found: {root} (expected a folder holding {name})")
    found = first_existing([root / name, root / "annotations" / name])
    if found is None:
        raise UserError(f"Karpathy split file not found: {root / name} "
                        f"(nor {root / 'annotations' / name})")
    return found


def _parse(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise DataError(f"{path}: invalid JSON ({error})") from None
    entries = document.get("images") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path}: no \"images\" list (expected Karpathy's "
                        f"{{\"images\": [...], \"dataset\": ...}})")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: images[{number}] is not an object")
    return entries


def _relative(path: Path, number: int, entry: dict[str, Any], dataset: str) -> str:
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DataError(f"{path}: images[{number}] has no \"filename\"")
    if dataset == "coco":
        filepath = entry.get("filepath")
        if not isinstance(filepath, str) or not filepath.strip():
            raise DataError(f"{path}: images[{number}] ({filename}) has no \"filepath\"")
        return f"{filepath.strip()}/{filename.strip()}"
    return filename.strip()


def _sentences(path: Path, number: int, entry: dict[str, Any]) -> list[str]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        raise DataError(f"{path}: images[{number}] has no \"sentences\" list")
    texts = []
    for k, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise DataError(f"{path}: images[{number}].sentences[{k}] has no \"raw\" text")
        if raw.strip():
            texts.append(raw.strip())
    return texts
