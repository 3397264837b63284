"""Image-caption pairs listed in a CSV or JSONL file; bad rows surface as BadItem at load time."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from vlalign.data.base import RAW, REWRITTEN, BadItem, Example
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

IMAGE_FIELDS = ("image", "image_path")
CAPTION_FIELD = "caption"
REWRITTEN_FIELD = "caption_rewritten"
LIST_FIELD = "captions"  # JSONL only: [raw, rewritten, ...]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# A parsed row: (image path text, raw caption, rewritten caption or None), or why it is unusable.
Row = tuple[str, str, str | None] | str


class CaptionFile:
    """Rows of ``image`` (or ``image_path``) + ``caption`` [+ ``caption_rewritten``] from CSV/JSONL.

    JSONL lines may give ``"captions": [raw, rewritten]`` instead. Relative image paths resolve
    against the file's folder. A file that is not CSV/JSONL, or lacks the image column, is a
    DataError at construction; a malformed row only raises BadItem when it is loaded.
    """

    class_names = None

    def __init__(self, path: str | os.PathLike[str], fmt: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"caption file not found: {self.path}")
        data = self.path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{self.path} is not a UTF-8 text CSV/JSONL file") from None
        self.format = fmt or FORMATS.get(self.path.suffix.lower()) or _sniff(text)
        if self.format not in ("csv", "tsv", "jsonl"):
            raise UserError(f"unknown caption file format {self.format!r}; valid: csv, tsv, jsonl")
        self.rows = _read_jsonl(self.path, text) if self.format == "jsonl" else _read_csv(
            self.path, text, "\t" if self.format == "tsv" else ",")
        self.name = f"{self.format}:{self.path}"
        self.fingerprint = hashlib.sha1(self.format.encode() + b"\n" + data).hexdigest()

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> Example:
        """Row ``index``'s decoded image and captions, or BadItem saying what is wrong."""
        row = self.rows[index]
        if isinstance(row, str):
            raise BadItem(f"{self.path}: {row}")
        image_text, raw, rewritten = row
        image_path = Path(image_text)
        if not image_path.is_absolute():
            image_path = self.path.parent / image_path
        captions = {RAW: raw} if rewritten is None else {RAW: raw, REWRITTEN: rewritten}
        return Example(key=f"{self.path.name}:{index}", image=decode_image(image_path),
                       captions=captions)


def _sniff(text: str) -> str:
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def _row(where: str, image: Any, raw: Any, rewritten: Any) -> Row:
    """Validate one record's fields into a Row (an error string when unusable)."""
    if not isinstance(image, str) or not image.strip():
        return f"{where}: missing image path"
    if not isinstance(raw, str) or not raw.strip():
        return f"{where}: empty or missing caption"
    if isinstance(rewritten, str) and rewritten.strip():
        return image.strip(), raw.strip(), rewritten.strip()
    return image.strip(), raw.strip(), None


def _read_csv(path: Path, text: str, delimiter: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = reader.fieldnames or []
        image_field = next((f for f in IMAGE_FIELDS if f in columns), None)
        if image_field is None:
            raise DataError(f"{path}: no image column (expected one of {', '.join(IMAGE_FIELDS)}; "
                            f"found {', '.join(columns) or 'no header'})")
        if CAPTION_FIELD not in columns:
            raise DataError(f"{path}: no {CAPTION_FIELD!r} column (found {', '.join(columns)})")
        return [_row(f"line {reader.line_num}", record.get(image_field),
                     record.get(CAPTION_FIELD), record.get(REWRITTEN_FIELD))
                for record in reader]
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV file (line {reader.line_num}: {error})"
                        ) from None


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    parsed = with_image = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            rows.append(f"{where}: invalid JSON ({error})")
            continue
        if not isinstance(record, dict):
            rows.append(f"{where}: expected a JSON object")
            continue
        parsed += 1
        image = next((record[f] for f in IMAGE_FIELDS if f in record), None)
        with_image += image is not None
        captions = record.get(LIST_FIELD)
        if isinstance(captions, list):
            raw, rewritten = (captions + [None, None])[:2]
        else:
            raw, rewritten = record.get(CAPTION_FIELD), record.get(REWRITTEN_FIELD)
        rows.append(_row(where, image, raw, rewritten))
    if not parsed:
        raise DataError(f"{path}: not a JSONL file (no line holds a JSON object)")
    if not with_image:
        raise DataError(f"{path}: no record has an image field "
                        f"(expected one of {', '.join(IMAGE_FIELDS)})")
    return rows
