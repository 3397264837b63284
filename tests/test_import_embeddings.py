"""`vlalign import-embeddings`: clip-retrieval / embedding-reader folders become feature stores
that SAIL trains on, resumably, and that are never mixed with features vlalign encodes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.cli import main
from vlalign.data import create_source
from vlalign.errors import DataError, StoreError, UserError
from vlalign.models import load_model
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.store import import_embeddings as module
from vlalign.store.import_embeddings import ImportOptions, import_embeddings
from vlalign.store.layout import MANIFEST
from vlalign.train.config import OptimConfig
from vlalign.utils.files import read_json

pytestmark = pytest.mark.usefixtures("one_thread")
SHARDS = {9: 5, 10: 7}  # numbered so that a name sort would put 10 first
IMAGE_DIM, TEXT_DIM = 12, 8
VISION, TEXT = "bundled:pixels?size=8&patch=4", "bundled:bow?dim=64"


def write_layout(root: Path, shards: dict[int, int] = SHARDS, key: str = "url") -> dict:
    """img_emb float16, text_emb float32, metadata with caption + ``key``; returns the rows."""
    rng = np.random.default_rng(0)
    for folder in ("img_emb", "text_emb", "metadata"):
        (root / folder).mkdir(parents=True)
    written = {"images": [], "texts": [], "captions": [], "keys": []}
    for k, n in shards.items():
        images = rng.standard_normal((n, IMAGE_DIM)).astype(np.float16)
        texts = rng.standard_normal((n, TEXT_DIM)).astype(np.float32)
        captions = [f"caption {k}-{i}" for i in range(n)]
        keys = [f"http://img/{k}/{i}.jpg" for i in range(n)]
        np.save(root / "img_emb" / f"img_emb_{k}.npy", images)
        np.save(root / "text_emb" / f"text_emb_{k}.npy", texts)
        pq.write_table(pa.table({"caption": captions, key: keys, "similarity": [0.3] * n}),
                       root / "metadata" / f"metadata_{k}.parquet")
        for name, value in zip(written, (images, texts, captions, keys)):
            written[name].append(value)
    return {"images": np.concatenate(written["images"]).astype(np.float32),
            "texts": np.concatenate(written["texts"]),
            "captions": sum(written["captions"], []), "keys": sum(written["keys"], [])}


def sail_config(store: Path, **changes) -> SailConfig:
    config = SailConfig(train_stores=[str(store)], vision_head=HeadConfig("glu", 2),
                        text_head=HeadConfig("glu", 2), embed_dim=16, batch_size=4, epochs=1,
                        optim=OptimConfig(lr=1e-3), loss_block_size=4, checkpoint_every=2,
                        log_every=1, precision="fp32", num_threads=1, device="cpu")
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_rows_equal_the_npy_rows_in_order_and_sail_trains_on_it(tmp_path: Path) -> None:
    written = write_layout(tmp_path / "emb")
    manifest = import_embeddings(tmp_path / "emb", tmp_path / "store",
                                 ImportOptions(shard_size=4, progress=False))
    store = FeatureStore(tmp_path / "store", verify=True)
    rows = np.arange(len(store))
    assert len(store) == 12 and len(manifest["shards"]) == 3 and manifest["dtype"] == "float32"
    assert np.array_equal(store.images(rows), written["images"])
    assert np.array_equal(store.texts(rows, "raw"), written["texts"])
    assert store.captions == [[c] for c in written["captions"]]
    assert store.keys == written["keys"] and store.caption_counts == {"raw": 12}
    assert store.transform is None and store.backbones[0].startswith("imported:")
    assert list(store.source_indices) == list(range(12))
    metrics = train_sail(sail_config(tmp_path / "store"), tmp_path / "run", progress=False,
                         max_steps=2)
    assert np.isfinite(metrics["loss"])
    assert read_json(tmp_path / "run" / "heads.json")["positives"] == ["raw"]


def test_mismatched_or_missing_shards_are_one_line_errors_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "emb"
    write_layout(root)
    np.save(root / "text_emb" / "text_emb_10.npy", np.zeros((6, TEXT_DIM), np.float32))
    with pytest.raises(DataError, match=r"text_emb_10.npy has 6 rows, .*img_emb_10.npy has 7"):
        import_embeddings(root, tmp_path / "a", ImportOptions(progress=False))
    np.save(root / "text_emb" / "text_emb_10.npy", np.zeros((7, TEXT_DIM), np.float32))
    pq.write_table(pa.table({"caption": ["x"] * 8}), root / "metadata" / "metadata_10.parquet")
    with pytest.raises(DataError, match=r"metadata_10.parquet has 8 rows"):
        import_embeddings(root, tmp_path / "a", ImportOptions(progress=False))
    pq.write_table(pa.table({"text": ["x"] * 7}), root / "metadata" / "metadata_10.parquet")
    with pytest.raises(DataError, match=r"metadata_10.parquet: no 'caption' column"):
        import_embeddings(root, tmp_path / "a", ImportOptions(progress=False))
    (root / "metadata" / "metadata_10.parquet").unlink()
    with pytest.raises(DataError, match=r"metadata/metadata_10.parquet is missing"):
        import_embeddings(root, tmp_path / "a", ImportOptions(progress=False))
    assert not (tmp_path / "a").exists()  # nothing written before the inputs check out
    code = main(["import-embeddings", str(root), "--out", str(tmp_path / "a"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "metadata_10.parquet is missing" in error


def test_an_interrupted_import_is_no_store_and_a_rerun_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_layout(tmp_path / "emb")
    options = ImportOptions(shard_size=4, progress=False)
    import_embeddings(tmp_path / "emb", tmp_path / "whole", options)
    save = module.atomic_save_npy
    calls = []

    def crash_on_the_second_shard(path: Path, array: np.ndarray) -> str:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save(path, array)

    monkeypatch.setattr(module, "atomic_save_npy", crash_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        import_embeddings(tmp_path / "emb", tmp_path / "store", options)
    with pytest.raises(StoreError, match=r"incomplete.*vlalign import-embeddings"):
        FeatureStore(tmp_path / "store")
    monkeypatch.setattr(module, "atomic_save_npy", save)
    manifest = import_embeddings(tmp_path / "emb", tmp_path / "store", options)
    assert manifest["last_run"]["rows_imported"] == 8  # shard 0 was kept
    whole, resumed = FeatureStore(tmp_path / "whole"), FeatureStore(tmp_path / "store", True)
    rows = np.arange(12)
    assert np.array_equal(whole.images(rows), resumed.images(rows))
    assert np.array_equal(whole.texts(rows), resumed.texts(rows))
    with pytest.raises(StoreError, match="different shard_size"):
        import_embeddings(tmp_path / "emb", tmp_path / "store", ImportOptions(shard_size=5))


def test_the_import_is_trained_on_but_never_reused_as_an_encoders_features(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_layout(tmp_path / "emb", {0: 6, 1: 6})
    code = main(["import-embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "store"),
                 "--vision-spec", VISION, "--text-spec", TEXT, "--dtype", "float16",
                 "--shard-size", "8", "--quiet"])
    assert code == 0 and "store ready" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "store")
    assert store.manifest["dtype"] == "float16"
    assert store.backbones == (f"imported:{VISION}", f"imported:{TEXT}")
    vision, text = create_vision_encoder(VISION), create_text_encoder(TEXT)
    with pytest.raises(StoreError, match=r"holds embeddings imported from .*choose another"):
        encode_store(create_source("digits:train[:8]"), vision, text, tmp_path / "store",
                     kinds=["raw"], specs=(VISION, TEXT),
                     options=EncodeOptions(num_workers=0, progress=False))
    encode_store(create_source("digits:train[:8]"), vision, text, tmp_path / "encoded",
                 kinds=["raw"], specs=(VISION, TEXT),
                 options=EncodeOptions(num_workers=0, progress=False))
    with pytest.raises(StoreError, match="encoded by vlalign, not an import"):
        import_embeddings(tmp_path / "emb", tmp_path / "encoded", ImportOptions(progress=False))
    with pytest.raises(StoreError, match="stores must share backbones"):  # no silent mixing
        train_sail(sail_config(tmp_path / "store",
                               train_stores=[str(tmp_path / "store"), str(tmp_path / "encoded")]),
                   tmp_path / "mixed", progress=False, max_steps=1)
    train_sail(sail_config(tmp_path / "store"), tmp_path / "run", progress=False, max_steps=2)
    with pytest.raises(UserError, match=re.escape(f"trained on imported:{VISION}")):
        load_model(tmp_path / "run")  # the real encoder's features may differ: said, not guessed
    assert read_json(tmp_path / "store" / MANIFEST)["imported"]["input_shards"] == 2
