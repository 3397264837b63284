"""A checkpoint or model file crafted to run code when unpickled is refused, never executed:
loading reads safetensors only (DESIGN 4)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import harness
from vlalign.errors import StoreError
from vlalign.sail.artifact import AlignmentHeads
from vlalign.sail.train import train_sail
from vlalign.utils.files import sha256_file


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _plant(path: Path, marker: Path) -> None:
    torch.save({"model": _Payload(marker)}, path)  # what a hostile ".pt" checkpoint looks like


def test_pickled_training_checkpoint_is_refused(clean_run, train_store: Path,
                                                tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(clean_run[0], run)
    record_path = run / json.loads((run / "latest.json").read_text())["checkpoint"]
    record = json.loads(record_path.read_text())
    _plant(run / record["tensors"], marker)
    record["sha256"] = sha256_file(run / record["tensors"])  # the attacker fixes the checksum too
    record_path.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="not a readable safetensors file.*refusing"):
        train_sail(harness.train_config(train_store), run, resume=True, progress=False)
    assert not marker.exists()


def test_pickled_model_weights_are_refused(clean_run, tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(clean_run[0], run)
    _plant(run / "heads.safetensors", marker)
    with pytest.raises(StoreError, match="not a readable safetensors file"):
        AlignmentHeads.from_pretrained(run)
    assert not marker.exists()
