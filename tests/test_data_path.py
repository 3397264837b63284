"""The SAIL training data path: batches cross to the device as stored (float16) and are cast
there; pinned host memory when the step runs on a GPU; a store held whole on the device gives
the very batches the host gather gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import harness
from vlalign.errors import StoreError
from vlalign.sail.train import train_sail
from vlalign.store import stream as stream_module
from vlalign.store.reader import FeatureStore
from vlalign.store.stream import Batch, BatchStream, ResidentRows, StoreMix

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["raw", "rewritten"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data-path") / "store"
    harness.encode(out, "digits:train[:96]")
    return out


def _stream(store: Path, **kw) -> BatchStream:
    return BatchStream(StoreMix([FeatureStore(store)]), 16, KINDS, seed=3, rank=1,
                       world_size=2, **kw)


def test_batches_cross_as_float16_and_are_cast_on_the_device() -> None:
    copies: list[tuple[torch.dtype, torch.dtype]] = []
    original = torch.Tensor.to

    def recording(self: torch.Tensor, *args, **kwargs):
        out = original(self, *args, **kwargs)
        copies.append((self.dtype, out.dtype))
        return out

    host = Batch(0, torch.randn(4, 3).half(), [torch.randn(4, 2).half()])
    torch.Tensor.to = recording
    try:
        moved = host.to(torch.device("cpu"), torch.float32)
    finally:
        torch.Tensor.to = original
    assert moved.images.dtype == torch.float32 and moved.texts[0].dtype == torch.float32
    torch.testing.assert_close(moved.images, host.images.float(), rtol=0, atol=0)
    # each tensor: first the move as stored (float16 -> float16), then the cast on the device
    assert copies == [(torch.float16, torch.float16), (torch.float16, torch.float32)] * 2


def test_pinned_batches_are_gathered_into_page_locked_memory(store: Path,
                                                             monkeypatch) -> None:
    pinned: list[tuple[int, ...]] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self: pinned.append(tuple(self.shape)) or self.clone())
    plain, pinning = _stream(store), _stream(store, pin_memory=True)
    for step in (0, 2):
        a, b = plain.load(step), pinning.load(step)
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    image_dim, text_dim = a.images.shape[1], a.texts[0].shape[1]
    assert pinned == [(8, image_dim), (8, text_dim), (8, text_dim)] * 2  # this rank's 8 rows
    assert not plain.pin_memory  # the CPU default: nothing pinned


def test_resident_rows_give_the_same_batches_as_the_host_gather(store: Path) -> None:
    data = StoreMix([FeatureStore(store)])
    resident = ResidentRows(data, KINDS, torch.device("cpu"))
    assert resident.images.dtype == torch.float16 and len(resident.images) == len(data)
    host, on_device = _stream(store), _stream(store, resident=resident)
    for step in range(host.steps_per_epoch + 2):  # into the second epoch's new order
        a, b = host.load(step), on_device.load(step)
        assert a.step == b.step == step
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
        for x, y in zip(a.texts, b.texts, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_store_too_large_for_the_device_is_one_line(store: Path, monkeypatch) -> None:
    monkeypatch.setattr(stream_module, "free_memory_bytes", lambda device: 1024)
    with pytest.raises(StoreError, match=r"data_on_device: the stores need 0\.0 GiB, cpu has "
                                         r"0\.0 GiB free; set data_on_device: false"):
        ResidentRows(StoreMix([FeatureStore(store)]), KINDS, torch.device("cpu"))


def test_training_with_data_on_device_equals_the_host_path(store: Path, tmp_path: Path) -> None:
    runs = {}
    for on_device in (False, True):
        run = tmp_path / f"run-{on_device}"
        train_sail(harness.train_config(store, data_on_device=on_device, epochs=2), run,
                   progress=False)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        runs[on_device] = [json.loads(line)["loss"] for line in lines]
    assert runs[False] == runs[True] and len(runs[False]) > 1
