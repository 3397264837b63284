"""Feature store: round trip, resume, refusal of mismatched reruns, streaming (kill -9 and bad
inputs: tests/faults/)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlalign.backbones import create_text_encoder, create_vision_encoder, image_to_tensor
from vlalign.data import create_source
from vlalign.errors import StoreError
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.store.layout import shard_file
from vlalign.store.stream import BatchStream, StoreMix

VISION, TEXT = "bundled:pixels?size=16", "bundled:bow"


def _encode(out: Path, data: str = "digits:train[:300]", **options) -> FeatureStore:
    options = {"shard_size": 64, "batch_size": 16, "num_workers": 0, "progress": False} | options
    encode_store(create_source(data), create_vision_encoder(VISION), create_text_encoder(TEXT),
                 out, kinds=["raw", "rewritten"], specs=(VISION, TEXT),
                 options=EncodeOptions(**options))
    return FeatureStore(out, verify=True)


def test_round_trip_matches_direct_encoding(tmp_path):
    store = _encode(tmp_path / "s", tokens=True)
    source = create_source("digits:train[:300]")
    assert len(store) == 300 and store.manifest["bad_items"] == 0
    assert len(store.manifest["shards"]) == 5  # 64 x 4 + 44
    vision = create_vision_encoder(VISION)
    rows = np.array([0, 63, 64, 299])
    pixels = torch.stack([image_to_tensor(source.load(int(i)).image, vision.preprocess)
                          for i in rows])
    expected = vision.encode(pixels, tokens=True)
    np.testing.assert_allclose(store.images(rows), expected.pooled.numpy(), atol=2e-3)
    np.testing.assert_allclose(store.tokens(rows), expected.tokens.numpy(), atol=2e-3)
    example = source.load(299)
    assert store.captions[299] == [example.captions["raw"], example.captions["rewritten"]]
    assert store.labels[299] == example.label
    texts = create_text_encoder(TEXT).encode(store.captions[63]).numpy()
    np.testing.assert_allclose(store.texts(np.array([63]))[0], texts, atol=2e-3)
    prompts = store.class_prompts()
    assert prompts.shape[0] == 10 and prompts.shape[2] == 384  # bow's default dim
    assert store.grid == (4, 4)


def test_rerun_of_complete_store_is_a_no_op_and_mismatch_is_refused(tmp_path):
    out = tmp_path / "s"
    store = _encode(out, data="digits:train[:100]")
    before = (out / "manifest.json").read_text()
    _encode(out, data="digits:train[:100]")
    assert (out / "manifest.json").read_text() == before
    with pytest.raises(StoreError, match="different dataset"):
        _encode(out, data="digits:train[:120]")
    with pytest.raises(StoreError, match="different tokens"):
        _encode(out, data="digits:train[:100]", tokens=True)
    assert len(store) == 100


def test_resume_skips_finished_shards_and_redoes_a_damaged_one(tmp_path):
    reference = _encode(tmp_path / "ref")
    out = tmp_path / "s"
    _encode(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "encoding"  # as if killed before the end
    (out / "manifest.json").write_text(json.dumps(manifest))
    shard_file(out, 2, "images").write_bytes(b"garbage")  # a torn write
    shard_file(out, 4, "meta").unlink()  # a shard that never finished
    kept = shard_file(out, 0, "images").stat().st_mtime_ns
    store = _encode(out)
    assert shard_file(out, 0, "images").stat().st_mtime_ns == kept  # not redone
    np.testing.assert_array_equal(store.images(np.arange(300)),
                                  reference.images(np.arange(300)))
    np.testing.assert_array_equal(store.texts(np.arange(300)), reference.texts(np.arange(300)))


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "positional-reads"])
def test_random_reads_equal_the_arrays_on_disk(tmp_path, mapped: bool):
    """Both read paths (a small store's mappings; a large store's positional reads) return the
    stored rows for runs, gaps, repeats, any order, across shards."""
    store = _encode(tmp_path / "s", tokens=True)
    assert store._mapped  # 300 rows: far below an eighth of the memory
    store._mapped = mapped
    rows = np.random.default_rng(0).integers(0, 300, 500)
    rows[:5] = [299, 0, 63, 64, 64]
    for what in ("images", "texts", "tokens"):
        whole = np.concatenate([np.load(p) for p in sorted((tmp_path / "s/shards").glob(
            f"*.{what}.npy"))])
        np.testing.assert_array_equal(getattr(store, what)(rows), whole[rows])
        np.testing.assert_array_equal(getattr(store, what)(np.arange(300)), whole)
    assert bool(store._maps) == mapped


def test_batch_stream_is_deterministic_disjoint_and_resumable(tmp_path):
    store = _encode(tmp_path / "s")
    data = StoreMix([store, store])
    stream = BatchStream(data, batch_size=64, kinds=["raw"], seed=3)
    assert stream.steps_per_epoch == 600 // 64
    epoch = np.concatenate([stream.order.rows_of(s) for s in range(stream.steps_per_epoch)])
    assert len(np.unique(epoch)) == len(epoch)  # no repeats within an epoch
    full = [b.images for b in stream.iterate(0, 12)]
    resumed = [b.images for b in BatchStream(data, 64, ["raw"], seed=3).iterate(7, 12)]
    for a, b in zip(full[7:], resumed):
        assert (a == b).all()
    prefetched = [b.images for b in BatchStream(data, 64, ["raw"], 3, prefetch=2).iterate(0, 12)]
    assert all((a == b).all() for a, b in zip(full, prefetched, strict=True))  # the GPU path
    halves = [BatchStream(data, 64, ["raw"], 3, rank=r, world_size=2).order.rows_of(5)
              for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), stream.order.rows_of(5))


def test_mixing_stores_of_different_backbones_is_refused(tmp_path):
    store = _encode(tmp_path / "a", data="digits:train[:64]")
    other = tmp_path / "b"
    encode_store(create_source("digits:train[:64]"), create_vision_encoder("bundled:pixels?size=8"),
                 create_text_encoder(TEXT), other, kinds=["raw"],
                 specs=("bundled:pixels?size=8", TEXT),
                 options=EncodeOptions(shard_size=64, num_workers=0, progress=False))
    with pytest.raises(StoreError, match="must share backbones"):
        StoreMix([store, FeatureStore(other)])


def test_incomplete_or_missing_store_errors(tmp_path):
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "encoding"}))
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(tmp_path)


def test_float16_that_cannot_hold_the_features_is_an_error_not_silent_zeros():
    from vlalign.store.encode import cast_features

    fine = np.array([[0.5, -2.0], [0.0, 0.0]], np.float32)  # an all-zero row stays allowed
    assert cast_features(fine, np.float16, "image").dtype == np.float16
    for bad in (np.array([[1e-8, -2e-8]], np.float32), np.array([[7e4, 1.0]], np.float32)):
        with pytest.raises(StoreError, match="--dtype float32"):
            cast_features(bad, np.float16, "image")
    assert cast_features(np.array([[1e-8]], np.float32), np.float32, "image")[0, 0] == 1e-8


def test_workers_ship_uint8_pixels_and_the_store_equals_the_float_path(tmp_path):
    """Decoding workers send resized, cropped uint8 pixels (a quarter of float32's bytes); the
    main process normalises them on the device, giving exactly the float pipeline's input."""
    from vlalign.store.encode import _Decoded

    vision = create_vision_encoder(VISION)
    item = _Decoded(create_source("digits:train[:4]"), vision, ["raw"])[2]
    assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape[0] == 3
    store = _encode(tmp_path / "s", data="digits:train[:40]", num_workers=1)
    source = create_source("digits:train[:40]")
    pixels = torch.stack([image_to_tensor(source.load(i).image, vision.preprocess)
                          for i in (0, 39)])
    np.testing.assert_array_equal(store.images(np.array([0, 39])),
                                  vision.encode(pixels).pooled.numpy().astype(np.float16))


def test_bf16_encoding_is_close_to_fp32_and_part_of_the_identity(tmp_path):
    """--precision bf16 autocasts both backbones: features within bf16 rounding of fp32, and
    recorded, so a store is never extended at another precision; auto is fp32 on the CPU."""
    spec = "bundled:mobilenetv2?runtime=torch"

    def encode(out: Path, precision: str) -> FeatureStore:
        encode_store(create_source("digits:train[:32]"), create_vision_encoder(spec),
                     create_text_encoder(TEXT), out, kinds=["raw"], specs=(spec, TEXT),
                     options=EncodeOptions(shard_size=16, batch_size=16, num_workers=0,
                                           progress=False, precision=precision))
        return FeatureStore(out)

    exact, low = encode(tmp_path / "fp32", "auto"), encode(tmp_path / "bf16", "bf16")
    assert "precision" not in exact.manifest and low.manifest["precision"] == "bf16"
    rows = np.arange(32)
    a, b = exact.images(rows).astype(np.float32), low.images(rows).astype(np.float32)
    assert not np.array_equal(a, b)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.97, cosine.min()  # 50 bf16 layers of a CNN: ~1-2% per feature
    with pytest.raises(StoreError, match="different precision"):
        encode(tmp_path / "bf16", "fp32")


def test_captions_encoded_beside_the_images_give_the_same_store(tmp_path):
    """overlap_captions (the GPU default) encodes and writes a finished shard's captions in a
    second thread while the next shard's images run: the store is the same, byte for byte."""
    plain = _encode(tmp_path / "plain", data="digits:train[:150]", overlap_captions=False)
    overlapped = _encode(tmp_path / "overlap", data="digits:train[:150]", overlap_captions=True)
    rows = np.arange(150)
    np.testing.assert_array_equal(plain.images(rows), overlapped.images(rows))
    np.testing.assert_array_equal(plain.texts(rows), overlapped.texts(rows))
    assert [s["sha256"] for s in plain.manifest["shards"]] == [
        s["sha256"] for s in overlapped.manifest["shards"]]
