"""Property tests: any CSV/TSV/JSONL file either loads or fails with a one-line DataError/UserError,
and every row of a loaded file is an example or a skipped BadItem, never a crash or a wrong row."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vlalign.data.base import RAW, REWRITTEN, BadItem
from vlalign.data.files import CaptionFile
from vlalign.errors import UserError

GOOD = "good.png"
IMAGES = [GOOD, "corrupt.png", "empty.png", "truncated.png", "missing.png", "folder", "",
          " ", "a\x00b.png", "../good.png", "/nonexistent/x.png"]
SUFFIXES = [".csv", ".tsv", ".jsonl", ".txt", ""]

captions = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\n", "a,b", 'say "hi"',
                                                              "tab\there", "ünï ☃"]))
fields = st.fixed_dictionaries(
    {"image": st.sampled_from(IMAGES) | st.text(max_size=20), "caption": captions},
    optional={"caption_rewritten": captions | st.none(), "extra": st.text(max_size=10),
              "captions": st.lists(captions | st.integers(), max_size=3)})


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good image, a corrupt one, a zero-byte one, a truncated one and a folder."""
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / GOOD)
    png = (root / GOOD).read_bytes()
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "folder").mkdir()
    return root


def _serialise(rows: list[dict], suffix: str) -> bytes:
    if suffix == ".jsonl" or (suffix not in (".csv", ".tsv") and rows and rows[0].get("extra")):
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    buffer = io.StringIO()
    names = sorted({k for r in rows for k in r if k != "captions"} | {"image", "caption"})
    writer = csv.DictWriter(buffer, names, delimiter="\t" if suffix == ".tsv" else ",",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "surrogatepass")


def _check(path: Path) -> None:
    """The property: construct or UserError; then every row loads or is a BadItem."""
    try:
        source = CaptionFile(path)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
        return
    for index in range(len(source)):
        try:
            example = source.load(index)
        except BadItem as bad:
            assert str(bad)
            continue
        assert example.image.mode == "RGB" and example.image.size == (8, 8)
        assert example.captions[RAW].strip() == example.captions[RAW]
        assert example.captions[RAW] and example.captions.get(REWRITTEN, "x")


@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_load_or_fail_in_one_line(image_dir: Path, data: bytes,
                                                  suffix: str) -> None:
    path = image_dir / f"pairs{suffix}"
    path.write_bytes(data)
    _check(path)


@given(rows=st.lists(fields, max_size=6), suffix=st.sampled_from(SUFFIXES),
       cut=st.none() | st.integers(0, 400), noise=st.binary(max_size=8))
def test_structured_rows_load_or_fail_in_one_line(image_dir: Path, rows: list[dict], suffix: str,
                                                  cut: int | None, noise: bytes) -> None:
    try:
        data = _serialise(rows, suffix)
    except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8 by any tool
        return
    if cut is not None:  # a damaged file: truncated and with stray bytes
        data = data[:cut] + noise
    path = image_dir / f"pairs{suffix}"
    path.write_bytes(data)
    _check(path)


@given(rows=st.lists(fields, min_size=1, max_size=6), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_well_formed_rows_keep_their_captions(image_dir: Path, rows: list[dict],
                                              suffix: str) -> None:
    """No silent wrong result: a row with the good image and a caption yields that caption."""
    for row in rows:
        row.pop("captions", None)
    try:
        data = _serialise(rows, suffix)
    except UnicodeEncodeError:
        return
    path = image_dir / f"pairs{suffix}"
    path.write_bytes(data)
    source = CaptionFile(path)
    assert len(source) == len(rows)
    for index, row in enumerate(rows):
        usable = row["image"].strip() == GOOD and row["caption"].strip()
        if not usable:
            continue
        example = source.load(index)
        assert example.captions[RAW] == row["caption"].strip()
        rewritten = row.get("caption_rewritten")
        if isinstance(rewritten, str) and rewritten.strip():
            assert example.captions[REWRITTEN] == rewritten.strip()
