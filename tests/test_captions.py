"""Caption kinds end to end: img2dataset-style shards (.jpg + .txt + .json) give raw and
rewritten captions, the store counts the kinds it really holds, and SAIL training uses only those
(one positive for a raw-only store, and says so; two when both are there)."""

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import RAW, REWRITTEN, create_source
from vlalign.data.webdataset_source import WebDatasetShards
from vlalign.errors import StoreError
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.store.layout import MANIFEST
from vlalign.store.stream import StoreMix
from vlalign.train.config import OptimConfig
from vlalign.utils.files import atomic_write_json, read_json

VISION, TEXT = "bundled:pixels?size=8", "bundled:bow?dim=32"
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
RGB = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220),
       "yellow": (230, 230, 20), "black": (5, 5, 5), "white": (250, 250, 250),
       "purple": (140, 20, 160), "orange": (250, 140, 10)}


def _jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), RGB[colour]).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_img2dataset_shard(path: Path, items: int, rewritten_field: str | None) -> Path:
    """A shard laid out as img2dataset writes it: KEY.jpg, KEY.txt (the caption) and KEY.json
    (caption, url, key, status, sizes, and any extra column, here the rewritten caption)."""
    with tarfile.open(path, "w") as tar:
        for i in range(items):
            key, colour = f"{i:09d}", COLOURS[i % len(COLOURS)]
            record = {"caption": f"{colour} square", "url": f"http://example.com/{i}.jpg",
                      "key": key, "status": "success", "width": 12, "height": 12,
                      "original_width": 12, "original_height": 12, "exif": "{}",
                      "sha256": "0" * 64}
            if rewritten_field:
                record[rewritten_field] = f"a photo of a plain {colour} square on its own"
            for ext, data in (("jpg", _jpeg(colour)), ("txt", f"{colour} square".encode()),
                              ("json", json.dumps(record).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _encode(source: str, out: Path) -> FeatureStore:
    encode_store(create_source(source), create_vision_encoder(VISION), create_text_encoder(TEXT),
                 out, kinds=[RAW, REWRITTEN], specs=(VISION, TEXT),
                 options=EncodeOptions(shard_size=32, batch_size=16, num_workers=0,
                                       progress=False))
    return FeatureStore(out)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, FeatureStore]:
    root = tmp_path_factory.mktemp("captions")
    both = write_img2dataset_shard(root / "both.tar", 48, "caption_rewritten")
    raw = write_img2dataset_shard(root / "raw.tar", 48, None)
    return {"both": _encode(f"wds:{both}", root / "both"),
            "raw": _encode(f"wds:{raw}", root / "raw")}


def test_txt_and_json_are_both_read(tmp_path):
    write_img2dataset_shard(tmp_path / "dreamlip.tar", 2, "longSV_captions")
    source = WebDatasetShards(tmp_path / "dreamlip.tar")
    assert source.load(1).captions == {RAW: "green square",
                                       REWRITTEN: "a photo of a plain green square on its own"}
    write_img2dataset_shard(tmp_path / "plain.tar", 2, None)
    assert WebDatasetShards(tmp_path / "plain.tar").load(0).captions == {RAW: "red square"}
    # .json alone: its caption is the raw one; a "captions" list works as in JSONL files
    members = {"a.png": _jpeg("red"),
               "a.json": json.dumps({"caption": "red", "long_caption": "a red tile"}).encode(),
               "b.jpg": _jpeg("blue"),
               "b.json": json.dumps({"captions": ["blue", "a blue tile"]}).encode()}
    with tarfile.open(tmp_path / "json.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    source = WebDatasetShards(tmp_path / "json.tar")
    assert source.load(0).captions == {RAW: "red", REWRITTEN: "a red tile"}
    assert source.load(1).captions == {RAW: "blue", REWRITTEN: "a blue tile"}


def test_store_counts_the_caption_kinds_it_really_has(stores):
    assert stores["both"].caption_counts == {RAW: 48, REWRITTEN: 48}
    assert stores["both"].real_caption_kinds == [RAW, REWRITTEN]
    raw = stores["raw"]
    assert raw.caption_kinds == [RAW, REWRITTEN]  # the column exists: it repeats the raw caption
    assert raw.caption_counts == {RAW: 48, REWRITTEN: 0}
    assert raw.real_caption_kinds == [RAW]
    assert raw.summary()["caption_counts"] == {RAW: 48, REWRITTEN: 0}
    assert all(row[0] == row[1] for row in raw.captions)


def test_stores_encoded_before_counts_were_recorded_are_counted_from_captions(stores, tmp_path):
    for name, expected in (("raw", {RAW: 48, REWRITTEN: 0}), ("both", {RAW: 48, REWRITTEN: 48})):
        manifest = read_json(stores[name].path / MANIFEST)
        del manifest["caption_counts"]
        copy = tmp_path / name
        copy.mkdir()
        (copy / "shards").symlink_to(stores[name].path / "shards")
        atomic_write_json(copy / MANIFEST, manifest)
        assert FeatureStore(copy).caption_counts == expected


def test_usable_kinds_leave_out_a_kind_a_store_lacks(stores):
    assert StoreMix([stores["both"]]).usable_kinds([RAW, REWRITTEN]) == ([RAW, REWRITTEN], [])
    kinds, notes = StoreMix([stores["both"], stores["raw"]]).usable_kinds([RAW, REWRITTEN])
    assert kinds == [RAW] and len(notes) == 1
    assert f"store {stores['raw'].path} has only 'raw' captions" in notes[0]
    assert notes[0].endswith("training with one positive ('raw')")
    with pytest.raises(StoreError, match="has only 'raw' captions.*nothing to train on"):
        StoreMix([stores["raw"]]).usable_kinds([REWRITTEN])


def _config(store: FeatureStore) -> SailConfig:
    return SailConfig(train_stores=[str(store.path)], vision_head=HeadConfig("glu", 2),
                      text_head=HeadConfig("glu", 2), embed_dim=8, batch_size=16, epochs=1,
                      optim=OptimConfig(lr=1e-3), loss_block_size=8, log_every=1,
                      precision="fp32", num_threads=1, verify_stores=False)


def _trained(run: Path) -> tuple[list[str], set[str]]:
    """heads.json's positives and the loss terms metrics.jsonl logged."""
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return read_json(run / "heads.json")["positives"], {k for k in metrics if "loss/" in k}


def test_raw_only_store_trains_with_one_positive_and_says_so(stores, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vlalign.sail.train"):
        train_sail(_config(stores["raw"]), tmp_path / "run", progress=False, max_steps=2)
    assert any("has only 'raw' captions: training with one positive" in r.getMessage()
               for r in caplog.records)
    positives, terms = _trained(tmp_path / "run")
    assert positives == [RAW] and terms == {"loss/raw"}


def test_store_with_both_kinds_trains_with_two_positives(stores, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vlalign.sail.train"):
        train_sail(_config(stores["both"]), tmp_path / "run", progress=False, max_steps=2)
    assert not [r for r in caplog.records if "captions" in r.getMessage()]
    positives, terms = _trained(tmp_path / "run")
    assert positives == [RAW, REWRITTEN] and terms == {"loss/raw", "loss/rewritten"}
