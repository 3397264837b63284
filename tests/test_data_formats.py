"""Data in the formats users have: parquet files, Hugging Face datasets (saved to disk, in the
local Hub cache, offline hub names) and webdataset shards that are remote or compressed."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import RAW, REWRITTEN, BadItem, create_source
from vlalign.data.parquet_source import ParquetSource
from vlalign.errors import DataError, UserError
from vlalign.store import EncodeOptions, FeatureStore, encode_store

pytestmark = pytest.mark.usefixtures("one_thread")
datasets = pytest.importorskip("datasets")
CLASSES = ["t-shirt", "trouser", "pullover", "dress"]
VISION, TEXT = "bundled:pixels?size=8&patch=4", "bundled:bow?dim=64"


def fashion_png(seed: int) -> bytes:
    """A Fashion-MNIST-like 28x28 grayscale image as PNG bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(fashion_png(99))
    data[60:] = b"\x00" * (len(data) - 60)  # header intact, pixel data destroyed
    return bytes(data)


def rows(n: int, start: int = 0) -> dict[str, list]:
    """Columns of ``n`` items: image bytes, two caption kinds, a label."""
    return {"image": [fashion_png(start + i) for i in range(n)],
            "caption": [f"item {start + i}" for i in range(n)],
            "caption_rewritten": [f"a photo of item {start + i}" for i in range(n)],
            "label": [(start + i) % len(CLASSES) for i in range(n)]}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two parquet files of 7 and 5 rows in row groups of 3; item 4 holds a corrupt image."""
    root = tmp_path_factory.mktemp("parquet")
    first, second = rows(7), rows(5, start=7)
    first["image"][4] = corrupt_png()
    pq.write_table(pa.table(first), root / "part-0.parquet", row_group_size=3)
    pq.write_table(pa.table(second), root / "part-1.parquet", row_group_size=3)
    return root


def test_parquet_items_captions_and_labels_equal_what_was_written(parquet_dir: Path) -> None:
    source = create_source(f"parquet:{parquet_dir}/*.parquet?label=label")
    written = {k: rows(7)[k] + rows(5, 7)[k] for k in ("image", "caption", "label")}
    assert len(source) == 12 and source.class_names == ["0", "1", "2", "3"]
    for index in (0, 3, 6, 7, 11):  # across row groups and files
        example = source.load(index)
        assert np.array_equal(np.asarray(example.image), pixels(written["image"][index]))
        assert example.captions == {RAW: f"item {index}", REWRITTEN: f"a photo of item {index}"}
        assert example.label == written["label"][index]
    with pytest.raises(BadItem, match=r"part-0.parquet:4.*corrupt"):
        source.load(4)
    # the same through a folder spec, a slice, and across pickling (DataLoader workers)
    part = create_source(f"parquet:{parquet_dir}?rewritten=none[6:9]")
    copy = pickle.loads(pickle.dumps(part))
    assert len(copy) == 3 and copy.load(1).captions == {RAW: "item 7"}
    assert copy.fingerprint == part.fingerprint != source.fingerprint


def test_hf_parquet_struct_images_class_names_and_relative_paths(tmp_path: Path) -> None:
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=CLASSES)})
    data = rows(6)
    records = {"image": [{"bytes": b, "path": None} for b in data["image"]],
               "caption": data["caption"], "label": data["label"]}
    datasets.Dataset.from_dict(records, features=features).to_parquet(tmp_path / "hf.parquet")
    source = create_source(f"parquet:{tmp_path / 'hf.parquet'}")
    assert source.class_names == CLASSES  # from the ClassLabel feature in the schema metadata
    example = source.load(5)
    assert example.label == 1 and example.captions == {RAW: "item 5"}
    assert np.array_equal(np.asarray(example.image), pixels(data["image"][5]))
    # paths relative to the parquet file, and a column named by option
    (tmp_path / "img").mkdir()
    for i, png in enumerate(data["image"][:3]):
        (tmp_path / "img" / f"{i}.png").write_bytes(png)
    pq.write_table(pa.table({"file": [f"img/{i}.png" for i in range(3)] + ["img/gone.png"],
                             "text": ["a", "b", "c", "d"]}), tmp_path / "paths.parquet")
    by_path = create_source(f"parquet:{tmp_path / 'paths.parquet'}?image=file")
    assert np.array_equal(np.asarray(by_path.load(2).image), pixels(data["image"][2]))
    assert by_path.load(0).captions == {RAW: "a"}
    with pytest.raises(BadItem, match="missing image file"):
        by_path.load(3)


def test_parquet_spec_errors_are_one_line(parquet_dir: Path, tmp_path: Path) -> None:
    spec = f"parquet:{parquet_dir}"
    for bad, message in [(f"{spec}?image=pixels", r"no column 'pixels' \(image=\)"),
                         (f"{spec}?colour=red", r"unknown option 'colour'.*valid: caption"),
                         (f"parquet:{tmp_path}/none*.parquet", "no parquet file matches"),
                         (f"{spec}?caption=none&label=none", "no caption column")]:
        with pytest.raises(UserError, match=message) as caught:
            create_source(bad)
        assert "\n" not in str(caught.value)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not a readable parquet file"):
        ParquetSource(str(tmp_path / "junk.parquet"))


def test_a_corrupt_parquet_image_is_skipped_counted_and_listed(parquet_dir: Path,
                                                               tmp_path: Path) -> None:
    source = create_source(f"parquet:{parquet_dir}")
    manifest = encode_store(source, create_vision_encoder(VISION), create_text_encoder(TEXT),
                            tmp_path / "store", kinds=[RAW, REWRITTEN], specs=(VISION, TEXT),
                            options=EncodeOptions(shard_size=8, batch_size=4, num_workers=0,
                                                  progress=False, max_bad_fraction=0.2))
    assert manifest["rows"] == 11 and manifest["bad_items"] == 1
    bad = [json.loads(line) for line in (tmp_path / "store" / "bad_items.jsonl").open()]
    assert bad[0]["index"] == 4 and "corrupt" in bad[0]["reason"]
    store = FeatureStore(tmp_path / "store")
    assert store.captions[4] == ["item 5", "a photo of item 5"]
    assert store.caption_counts == {RAW: 11, REWRITTEN: 11}


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DatasetDict (train 6, test 4) written by save_to_disk; test item 2 is corrupt."""
    root = tmp_path_factory.mktemp("hf") / "fashion"
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=CLASSES)})
    splits = {}
    for name, n, start in (("train", 6, 0), ("test", 4, 100)):
        data = rows(n, start)
        images = [{"bytes": b, "path": None} for b in data["image"]]
        if name == "test":
            images[2] = {"bytes": corrupt_png(), "path": None}
        splits[name] = datasets.Dataset.from_dict(
            {"image": images, "caption": data["caption"], "label": data["label"]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def test_saved_datasets_split_captions_labels_and_corrupt_items(saved_dataset: Path) -> None:
    train = create_source(f"hf:{saved_dataset}")
    assert len(train) == 6 and train.class_names == CLASSES
    assert train.load(5).captions == {RAW: "item 5"} and train.load(5).label == 1
    assert np.array_equal(np.asarray(train.load(3).image), pixels(fashion_png(3)))
    test = create_source(f"hf:{saved_dataset}?split=test")
    assert [test.load(i).captions[RAW] for i in (0, 1, 3)] == ["item 100", "item 101", "item 103"]
    with pytest.raises(BadItem, match="corrupt"):
        test.load(2)
    labelled = pickle.loads(pickle.dumps(create_source(f"hf:{saved_dataset}?caption=none[2:4]")))
    first = labelled.load(0)
    assert first.captions[RAW] == "a photo of a pullover." and first.label == 2
    with pytest.raises(UserError, match=r"no split 'validation'; valid: train, test"):
        create_source(f"hf:{saved_dataset}?split=validation")


def test_hub_repo_in_the_local_cache_loads_offline_and_an_unknown_one_fails_fast(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    repo = tmp_path / "hub" / "datasets--acme--tiny-fashion"
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    pq.write_table(pa.table(rows(5)), snapshot / "data" / "train-00000-of-00001.parquet")
    source = create_source("hf:acme/tiny-fashion?label=none")
    assert len(source) == 5 and source.class_names is None
    assert source.load(4).captions == {RAW: "item 4", REWRITTEN: "a photo of item 4"}
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"hf:acme/absent is not a local folder.*offline") as caught:
        create_source("hf:acme/absent")
    assert time.perf_counter() - started < 5 and "\n" not in str(caught.value)


# ------------------------------------------------------------------ webdataset: remote, compressed

def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_compressed_webdataset_shards_are_refused_naming_the_shard(tmp_path: Path) -> None:
    plain = _tar({"000.png": fashion_png(0), "000.txt": b"a shirt"})
    (tmp_path / "ok-000.tar").write_bytes(plain)
    (tmp_path / "ok-001.tar.gz").write_bytes(gzip.compress(plain))
    (tmp_path / "disguised.tar").write_bytes(gzip.compress(plain))  # gzip under a .tar name
    assert len(create_source(f"wds:{tmp_path}/ok-000.tar")) == 1
    for name in ("ok-001.tar.gz", "disguised.tar"):
        with pytest.raises(UserError, match=rf"{name} is gzip-compressed.*gunzip -k") as caught:
            create_source(f"wds:{tmp_path}/{name}")
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"ok-001.tar.gz is gzip"):
        create_source(f"wds:{tmp_path}/ok-*")


@pytest.mark.parametrize(("spec", "hint"), [
    ("wds:https://example.com/shards/shard-{000..002}.tar", r"shard-000.tar is a stream.*curl"),
    ("wds:pipe:curl -s https://example.com/a.tar", r"stream.*curl -s https://example.com/a.tar >"),
    ("wds:s3://bucket/shard-000.tar", r"aws s3 cp s3://bucket/shard-000.tar")])
def test_remote_webdataset_shards_are_refused_with_what_to_do(spec: str, hint: str) -> None:
    started = time.perf_counter()
    with pytest.raises(UserError, match=hint) as caught:
        create_source(spec)
    assert time.perf_counter() - started < 1 and "\n" not in str(caught.value)
