"""Bad inputs give the documented behaviour: a bad item is skipped, counted and listed; a bad
file, store or run is a one-line error before any work. Never a crash mid-run, never a silent
wrong result."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness
from vlalign.cli import main
from vlalign.errors import DataError, StoreError, UserError
from vlalign.sail.train import train_sail
from vlalign.store import FeatureStore
from vlalign.store.layout import shard_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 90, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


# file name -> (content or None for no file, caption, why it is skipped or None)
ITEMS = {
    "good0.png": (_png(10), "red level zero", None),
    "corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "corrupt", "corrupt"),
    "truncated.jpg": (_jpeg()[:300], "half a jpeg", "truncated"),
    "empty.png": (b"", "zero bytes", "zero-byte"),
    "text.png": (b"just some text, not pixels\n", "a text file", "not an image"),
    "missing.png": (None, "never written", "missing"),
    "good1.png": (_png(80), "red level one", None),
    "folder.png": ("dir", "a directory", "unreadable"),
    "good2.png": (_png(160), "  ", "empty or missing caption"),
    "good3.png": (_png(240), "red level three", None),
}


def _write_items(root: Path) -> Path:
    for name, (content, _, _) in ITEMS.items():
        if content == "dir":
            (root / name).mkdir()
        elif content is not None:
            (root / name).write_bytes(content)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": n, "caption": c}) + "\n"
                             for n, (_, c, _) in ITEMS.items()))
    return pairs


def test_bad_items_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    pairs = _write_items(tmp_path)
    harness.encode(tmp_path / "store", f"jsonl:{pairs}", max_bad_fraction=0.9, shard_size=4)
    store = FeatureStore(tmp_path / "store", verify=True)
    bad = [json.loads(x) for x in (tmp_path / "store/bad_items.jsonl").read_text().splitlines()]
    names = list(ITEMS)
    expected = {i: ITEMS[n][2] for i, n in enumerate(names) if ITEMS[n][2]}
    assert {b["index"]: b["reason"] for b in bad}.keys() == expected.keys()
    for item in bad:
        assert expected[item["index"]] in item["reason"], item
    assert store.manifest["bad_items"] == len(expected) and len(store) == 3
    good = [i for i, n in enumerate(names) if not ITEMS[n][2]]
    assert store.source_indices.tolist() == good  # rows map to the right source items
    assert [c[0] for c in store.captions] == [ITEMS[names[i]][1] for i in good]
    images = store.images(np.arange(3)).astype(np.float32).reshape(3, 3, 64)
    assert (np.diff(images[:, 0].mean(1)) > 0).all()  # red rises 10 -> 80 -> 240: no mix-up


def test_too_many_bad_items_is_one_line_error_and_the_store_resumes(tmp_path: Path) -> None:
    pairs = _write_items(tmp_path)
    with pytest.raises(DataError, match=r"7 of 10 items are unusable .*--max-bad-fraction 0\.5"):
        harness.encode(tmp_path / "store", f"jsonl:{pairs}", max_bad_fraction=0.5, shard_size=4)
    assert json.loads((tmp_path / "store/manifest.json").read_text())["status"] == "encoding"
    harness.encode(tmp_path / "store", f"jsonl:{pairs}", max_bad_fraction=0.9, shard_size=4)
    assert len(FeatureStore(tmp_path / "store", verify=True)) == 3


def test_non_utf8_captions(tmp_path: Path) -> None:
    """A CSV that is not UTF-8 fails up front; a non-UTF-8 webdataset caption is one bad item."""
    (tmp_path / "a.png").write_bytes(_png(50))
    csv = tmp_path / "pairs.csv"
    csv.write_bytes("image,caption\na.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not a UTF-8 text CSV/JSONL file"):
        harness.encode(tmp_path / "csv-store", f"csv:{csv}")
    assert not (tmp_path / "csv-store").exists()
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for key, data in [("0.png", _png(1)), ("0.txt", b"fine"), ("1.png", _png(2)),
                          ("1.txt", "caf\u00e9".encode("latin-1"))]:
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    harness.encode(tmp_path / "wds-store", f"wds:{tmp_path / 'shard.tar'}", max_bad_fraction=0.6)
    store = FeatureStore(tmp_path / "wds-store")
    assert len(store) == 1 and store.captions == [["fine", "fine"]]
    bad = json.loads((tmp_path / "wds-store/bad_items.jsonl").read_text())
    assert bad["index"] == 1 and "unreadable caption ('utf-8' codec" in bad["reason"]


def test_missing_paths_are_one_line_errors(tmp_path: Path, capsys) -> None:
    for argv, message in [
        (["encode", "--vision", harness.VISION, "--text", harness.TEXT, "--data",
          f"csv:{tmp_path / 'nope.csv'}", "--out", str(tmp_path / "s")], "caption file not found"),
        (["train", "sail", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
         "is not a feature store"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err


def _damaged_copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


def test_shard_with_a_wrong_checksum_stops_training_before_the_first_step(
        train_store: Path, tmp_path: Path, capsys) -> None:
    store = _damaged_copy(train_store, tmp_path)
    path = shard_file(store, 3, "texts")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40  # one flipped bit: same size, wrong content
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="00003.texts.npy: checksum mismatch"):
        FeatureStore(store, verify=True)
    run = tmp_path / "run"
    assert main(["train", "sail", "--store", str(store), "--out", str(run), "--quiet",
                 "--set", "batch_size=40", "--set", "embed_dim=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err
    assert not (run / "latest.json").exists()


def test_truncated_shard_is_an_error_on_read_even_unverified(train_store: Path,
                                                             tmp_path: Path) -> None:
    store = _damaged_copy(train_store, tmp_path)
    path = shard_file(store, 2, "images")
    path.write_bytes(path.read_bytes()[:-100])
    reader = FeatureStore(store)
    reader.images(np.arange(0, 64))  # shards 0 and 1 are fine
    with pytest.raises(StoreError, match=r"00002.images.npy: .*bytes, expected .*truncated"):
        reader.images(np.arange(60, 70))


def test_shard_dims_that_do_not_match_the_manifest_are_an_error(train_store: Path,
                                                                tmp_path: Path) -> None:
    store = _damaged_copy(train_store, tmp_path)
    path = shard_file(store, 1, "images")
    np.save(path, np.zeros((32, 100), np.float16))  # other dims (checksums not even consulted)
    with pytest.raises(StoreError, match=r"00001.images.npy: holds float16 \(32, 100\), the "
                                         r"manifest promises float16 \(32, 192\)"):
        FeatureStore(store).images(np.arange(40))


@pytest.fixture(scope="module")
def other_dims_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other") / "store"
    harness.encode(out, "digits:train[:80]", vision_spec="bundled:pixels?size=4&patch=2")
    return out


def test_store_whose_dims_do_not_match_the_model(train_store: Path, other_dims_store: Path,
                                                 clean_run, tmp_path: Path) -> None:
    """As a validation store (checked before training) and under a resumed run."""
    config = harness.train_config(train_store, val_stores=[str(other_dims_store)])
    with pytest.raises(StoreError, match="validation store .* they must match"):
        train_sail(config, tmp_path / "run", progress=False)
    run = tmp_path / "resumed"
    shutil.copytree(clean_run[0], run)
    with pytest.raises(UserError, match=r"checkpoint was made with vision_head = .*'in_dim': 192.*"
                                        r"this run has .*'in_dim': 48.*use another --out"):
        train_sail(harness.train_config(other_dims_store), run, resume=True, progress=False)
