"""MMVP-VLM (MMVP/MMVP_VLM on the Hugging Face hub) in its released file layout.

Expected layout::

    ROOT/Questions.csv
    ROOT/MLLM_VLM Images/<Type>/<Question ID>.jpg     (``MLLM_VLM_Images`` is accepted too)

``Questions.csv`` has a header row ``Question ID,Type,Statement`` and one row per image; rows
``2k-1`` and ``2k`` (consecutive rows, odd question id first) form pair ``k``, and statement ``i``
describes image ``i``. Both images of a pair are read from the first row's ``Type`` folder, as the
official evaluation does. Items are ``PairItem(key="<id1>-<id2>", images, captions, tag=Type)``
in file order (150 pairs, 15 for each of 9 visual patterns). Captions are the statements with the
prefix ``"a photo of "`` (``"a photo of " + statement``), exactly the text MMVP-VLM's official
evaluation scores. An odd number of rows, a pair whose ids are not ``2k-1, 2k``, a pair whose two
rows have different Types, or a missing column is a UserError naming the file and line; a missing
or corrupt image raises BadItem when loaded.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from vlalign.data.benchmarks._files import (
    Fingerprint,
    first_existing,
    read_bytes,
    read_text,
    require_dir,
)
from vlalign.data.benchmarks.base import PairItem
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError

QUESTIONS_FILE = "Questions.csv"
IMAGE_DIRS = ("MLLM_VLM Images", "MLLM_VLM_Images")
COLUMNS = ("Question ID", "Type", "Statement")
PREFIX = "a photo of "

# (question id, type, statement) of one CSV row
Row = tuple[int, str, str]


class MMVP:
    """MMVP-VLM's statement pairs as a ``PairSet`` (see the module docstring)."""

    class_names = None

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = require_dir(root, "MMVP-VLM")
        self.path = self.root / QUESTIONS_FILE
        if not self.path.is_file():
            raise UserError(f"MMVP-VLM questions file not found: {self.path}")
        image_dir = first_existing([self.root / name for name in IMAGE_DIRS])
        if image_dir is None:
            raise UserError(f"MMVP-VLM image folder not found: {self.root / IMAGE_DIRS[0]} "
                            f"(nor {self.root / IMAGE_DIRS[1]})")
        self.image_dir = image_dir
        data = read_bytes(self.path)
        rows = _read_rows(self.path, read_text(self.path, data))
        if len(rows) % 2:
            raise DataError(f"{self.path}: odd number of question rows ({len(rows)}); rows "
                            f"form pairs, the last (line {rows[-1][0]}) has no partner")
        self.pairs: list[tuple[Row, Row]] = []
        for (line_a, a), (line_b, b) in zip(rows[0::2], rows[1::2]):
            if a[1] != b[1]:
                raise DataError(f"{self.path}: line {line_b} (Question ID {b[0]}) has Type "
                                f"{b[1]!r} but its pair's line {line_a} has {a[1]!r}")
            if a[0] % 2 != 1 or b[0] != a[0] + 1:
                raise DataError(f"{self.path}: lines {line_a}-{line_b} pair Question IDs "
                                f"{a[0]} and {b[0]}; expected 2k-1 and 2k")
            self.pairs.append((a, b))
        if not self.pairs:
            raise DataError(f"{self.path}: no question rows")
        fingerprint = Fingerprint("mmvp")
        fingerprint.add_bytes(data)
        for a, b in self.pairs:
            for qid in (a[0], b[0]):
                relative = f"{a[1]}/{qid}.jpg"
                fingerprint.add_file(self.image_dir / relative, relative)
        self.name = f"mmvp:{self.root}"
        self.fingerprint = fingerprint.hexdigest()

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> PairItem:
        """Pair ``index``: both images, the two prefixed statements, and the Type as tag."""
        a, b = self.pairs[index]
        folder = self.image_dir / a[1]
        return PairItem(key=f"{a[0]}-{b[0]}",
                        images=(decode_image(folder / f"{a[0]}.jpg"),
                                decode_image(folder / f"{b[0]}.jpg")),
                        captions=(PREFIX + a[2], PREFIX + b[2]), tag=a[1])


def _read_rows(path: Path, text: str) -> list[tuple[int, Row]]:
    """(line number, row) of every non-empty data row, validated."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise DataError(f"{path}: header has no {missing[0]!r} column (expected "
                            f"{','.join(COLUMNS)}; found {','.join(header) or 'nothing'})")
        columns = [header.index(name) for name in COLUMNS]
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            line = reader.line_num
            if len(record) < len(header):
                raise DataError(f"{path}: line {line} has {len(record)} fields, "
                                f"expected {len(header)}")
            qid_text, kind, statement = (record[c].strip() for c in columns)
            try:
                qid = int(qid_text)
            except ValueError:
                raise DataError(f"{path}: line {line} has Question ID {qid_text!r}, "
                                f"expected an integer") from None
            if not kind or not statement:
                raise DataError(f"{path}: line {line} has an empty Type or Statement")
            rows.append((line, (qid, kind, statement)))
        return rows
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV file (line {reader.line_num}: {error})"
                        ) from None
