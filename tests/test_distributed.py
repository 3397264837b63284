"""Two CPU processes (gloo) under torchrun's variables equal one process: an encode gives the same
store byte for byte, and 20 SAIL steps on the same global batches reach the same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import harness

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_encode_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    """The real CLI under `torchrun --nproc_per_node 2`, no new flag; every file compared."""
    argv = ["encode", "--vision", harness.VISION, "--text", harness.TEXT, "--data",
            "digits:train[:150]", "--shard-size", "32", "--batch-size", "16", "--workers", "0",
            "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "vlalign", *argv, str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert harness.run("encode", {"out": str(tmp_path / "one"), "data": "digits:train[:150]"}) == 0
    harness.same_store(tmp_path / "two", tmp_path / "one")


def test_two_ranks_resume_a_partial_store_with_bad_items(tmp_path: Path) -> None:
    """A store killed mid-encode by one process is finished by two; bad items merge in order."""
    rows = []
    for i in range(90):
        name = f"{i}.png"
        if i % 13 == 5:
            (tmp_path / name).write_bytes(b"broken")
        else:
            Image.new("RGB", (8, 8), (i, 255 - i, 0)).save(tmp_path / name)
        rows.append({"image": name, "caption": f"colour {i}"})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = {"data": f"jsonl:{pairs}", "max_bad_fraction": 0.2, "shard_size": 16}
    assert harness.run("encode", {**args, "out": str(tmp_path / "one")}) == 0
    partial = {**args, "out": str(tmp_path / "two")}
    assert harness.run("encode", dict(partial), kill_at=12) == -signal.SIGKILL
    assert harness.run_ranks("encode", [dict(partial), dict(partial)], _free_port()) == [0, 0]
    harness.same_store(tmp_path / "two", tmp_path / "one")
    assert (tmp_path / "one/bad_items.jsonl").read_text().count("\n") == 7


def _train(store: Path, run: Path, **config) -> dict:
    return {"store": str(store), "run": str(run), "config": {"epochs": 4, **config}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "store"
    assert harness.run("encode", {"out": str(out), "data": "digits:train[:200]"}) == 0
    return out


@pytest.mark.parametrize("optimizer", ["lion", "adamw"])
def test_twenty_steps_on_two_ranks_equal_one_process(store: Path, tmp_path: Path,
                                                     optimizer: str) -> None:
    """Tolerance: the ranks sum gradients in another order than one process does, so weights
    may differ by float rounding. AdamW: |a - b| <= 1e-6 + 1e-5 |b| everywhere (measured:
    1.2e-7 at most). Lion steps by +-lr, so rounding could flip a sign where the update
    direction is ~0: at most 0.1% of entries may differ, each by at most 2 lr per step
    (measured: none)."""
    lr, steps = 1e-3, 20
    optim = {"name": optimizer, "lr": lr}
    assert harness.run("train", _train(store, tmp_path / "one", optim=optim)) == 0
    ranks = [_train(store, tmp_path / "two", optim=optim) for _ in range(2)]
    assert harness.run_ranks("train", ranks, _free_port()) == [0, 0]
    assert json.loads((tmp_path / "two/heads.json").read_text())["step"] == steps
    one, two = (load_file(tmp_path / f"{n}/heads.safetensors") for n in ("one", "two"))
    assert one.keys() == two.keys()
    for key, expected in one.items():
        diff = (two[key] - expected).abs()
        if optimizer == "adamw":
            torch.testing.assert_close(two[key], expected, rtol=1e-5, atol=1e-6)
        else:
            assert (diff > 1e-6).float().mean() <= 1e-3 and diff.max() <= 2 * lr * steps, key


def test_a_failure_on_one_rank_stops_every_rank(store: Path, tmp_path: Path) -> None:
    """Rank 0's checkpoint write hits a full disk: both ranks exit with an error, none hangs."""
    ranks = [_train(store, tmp_path / "run") for _ in range(2)]
    ranks[0]["disk_full"] = "ckpt-00000008.safetensors.tmp"
    assert harness.run_ranks("train", ranks, _free_port(), timeout=60) == [1, 1]
    assert json.loads((tmp_path / "run/latest.json").read_text())["step"] == 4
