"""Winoground (facebook/winoground on the Hugging Face hub) in its released file layout.

Expected layout (the hub repository with ``data/images.zip`` unzipped in place)::

    ROOT/data/examples.jsonl
    ROOT/data/images/ex_0_img_0.png
    ROOT/data/images/ex_0_img_1.png
    ...

``ROOT`` may also be the ``data`` folder itself. Each line of ``examples.jsonl`` is one example:
``{"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "...",
"caption_1": "...", "tag": "...", "secondary_tag": "...", "num_main_preds": 1,
"collapsed_tag": "Object"}``; image ``k`` is ``images/<image_k>.png`` and caption ``k``
describes image ``k``. Items are ``PairItem(key=str(id), images, captions,
tag=collapsed_tag)`` in file order; ``record(i)`` gives the whole line (tag, secondary_tag,
num_main_preds) for finer breakdowns. A missing file, invalid JSON, or a line without
``id``/``image_k``/``caption_k`` is a UserError naming the file and line; a missing or corrupt
image raises BadItem when loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlalign.data.benchmarks._files import Fingerprint, read_bytes, read_text, require_dir
from vlalign.data.benchmarks.base import PairItem
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

EXAMPLES_FILE = "examples.jsonl"
IMAGE_DIR = "images"
REQUIRED = ("id", "image_0", "image_1", "caption_0", "caption_1")


class Winoground:
    """Winoground's 400 examples (or any JSONL in its format) as a ``PairSet``."""

    class_names = None

    def __init__(self, root: str | os.PathLike[str]) -> None:
        given = require_dir(root, "Winoground")
        self.data_dir = given / "data" if (given / "data" / EXAMPLES_FILE).is_file() else given
        self.path = self.data_dir / EXAMPLES_FILE
        if not self.path.is_file():
            raise UserError(f"Winoground examples file not found: {given / 'data' / EXAMPLES_FILE}"
                            f" (nor {given / EXAMPLES_FILE})")
        data = read_bytes(self.path)
        self.records: list[dict[str, Any]] = []
        for number, line in enumerate(read_text(self.path, data).splitlines(), 1):
            if line.strip():
                self.records.append(_record(self.path, number, line))
        if not self.records:
            raise DataError(f"{self.path}: no examples")
        fingerprint = Fingerprint("winoground")
        fingerprint.add_bytes(data)
        for record in self.records:
            for k in (0, 1):
                relative = _image_name(record[f"image_{k}"])
                fingerprint.add_file(self.data_dir / IMAGE_DIR / relative, relative)
        self.name = f"winoground:{given}"
        self.fingerprint = fingerprint.hexdigest()

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> dict[str, Any]:
        """Example ``index``'s JSON record (all fields, e.g. ``tag``, ``num_main_preds``)."""
        return dict(self.records[index])

    def load(self, index: int) -> PairItem:
        """Example ``index``: both images and captions, tagged with its collapsed tag."""
        record = self.records[index]
        images = tuple(decode_image(self.data_dir / IMAGE_DIR / _image_name(record[f"image_{k}"]))
                       for k in (0, 1))
        return PairItem(key=str(record["id"]), images=(images[0], images[1]),
                        captions=(record["caption_0"].strip(), record["caption_1"].strip()),
                        tag=str(record.get("collapsed_tag") or ""))


def _image_name(stem: str) -> str:
    """``ex_0_img_0`` -> ``ex_0_img_0.png`` (a name that already has a suffix is kept)."""
    return stem if Path(stem).suffix else f"{stem}.png"


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise DataError(f"{path}: line {number} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {number} is not a JSON object")
    for field in REQUIRED:
        value = record.get(field)
        if value is None or (field != "id" and (not isinstance(value, str) or not value.strip())):
            raise DataError(f"{path}: line {number} has no {field!r} (expected fields "
                            f"{', '.join(REQUIRED)}, collapsed_tag)")
    return record
