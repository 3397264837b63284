"""A store made before vlalign followed each library's image transform (its manifest records
only size, mean and std) is never used as if it held today's features: SAIL validation stores,
UTA target stores and the probe's reusable stores are checked, not only `vlalign encode`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import harness
from vlalign.backbones import create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import StoreError
from vlalign.models import load_model
from vlalign.probe.run import StoreFinder
from vlalign.sail.train import train_sail
from vlalign.store.layout import MANIFEST
from vlalign.store.reader import FeatureStore
from vlalign.uta.data import open_stores
from vlalign.utils.files import atomic_write_json, read_json

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = "digits:train[:64]"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A current store, and a copy whose manifest says it was made by an older vlalign."""
    root = tmp_path_factory.mktemp("stale")
    harness.encode(root / "current", DATA)
    shutil.copytree(root / "current", root / "old")
    manifest = read_json(root / "old" / MANIFEST)
    pre = manifest["vision"]["preprocess"]
    manifest["vision"]["preprocess"] = {k: pre[k] for k in ("size", "mean", "std")}
    atomic_write_json(root / "old" / MANIFEST, manifest)
    return root / "current", root / "old"


def test_sail_refuses_a_validation_store_of_another_transform(stores, tmp_path: Path) -> None:
    current, old = stores
    config = harness.train_config(current, val_stores=[str(old)])
    with pytest.raises(StoreError, match=r"validation store .*old holds features of another "
                                         r"image transform than the training store"):
        train_sail(config, tmp_path / "run", progress=False)


def test_uta_refuses_target_stores_of_another_transform(stores) -> None:
    current, old = stores
    vision = create_vision_encoder(harness.VISION)
    source = create_source(DATA)
    with pytest.raises(StoreError, match=r"old holds features made with another image "
                                         r"transform .*re-encode it"):
        open_stores([str(old)], [source], vision, (4, 4))
    with pytest.raises(StoreError, match="no token maps"):  # the current one passes that check
        open_stores([str(current)], [source], vision, (4, 4))


def test_the_probe_does_not_reuse_an_old_store(stores, tmp_path: Path) -> None:
    current, old = stores
    vision = create_vision_encoder(harness.VISION)
    fingerprint = create_source(DATA).fingerprint
    transform = vision.preprocess.to_dict()
    finder = StoreFinder(tmp_path, [FeatureStore(old)], "data", progress=False)
    assert finder._find(fingerprint, 0, vision.identity, transform) is None
    assert finder._find(fingerprint, 1, FeatureStore(old).backbones[1], transform) is not None
    finder.known.append(FeatureStore(current))
    assert finder._find(fingerprint, 0, vision.identity, transform).path == FeatureStore(
        current).path


def test_heads_of_an_older_transform_load_with_a_warning(stores, tmp_path: Path,
                                                         caplog) -> None:
    """Heads trained on features of another image transform still load (they work, less well),
    and say so in one warning line."""
    current, _ = stores
    run = tmp_path / "run"
    train_sail(harness.train_config(current, epochs=1), run, progress=False)
    load_model(run)
    assert "another image transform" not in caplog.text
    config = read_json(run / "heads.json")
    pre = config["vision"]["preprocess"]
    config["vision"]["preprocess"] = {k: pre[k] for k in ("size", "mean", "std")}
    atomic_write_json(run / "heads.json", config)
    load_model(run)
    assert "trained on features of another image transform" in caplog.text
