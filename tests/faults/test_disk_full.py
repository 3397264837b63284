"""A full disk during encoding or checkpointing fails cleanly (one-line DiskFullError, no
partial file left where a rerun reads it), and a rerun after space is freed completes with the
result of an uninterrupted run. Once with writes sent to /dev/full (runs everywhere), once on a
small tmpfs mounted for the test (needs root; skipped otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

import harness
from vlalign.cli import main
from vlalign.errors import DiskFullError
from vlalign.sail.train import train_sail
from vlalign.utils import files
from vlalign.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = "digits:train[:100]"


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "store"
    harness.encode(out, DATA)
    return out


def _same_heads(run: Path, clean: Path) -> None:
    ours, theirs = load_file(run / "heads.safetensors"), load_file(clean / "heads.safetensors")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)


def _encode_argv(out: Path) -> list[str]:
    return ["encode", "--vision", harness.VISION, "--text", harness.TEXT, "--data", DATA,
            "--out", str(out), "--shard-size", "32", "--batch-size", "16", "--workers", "0",
            "--quiet"]


def test_encode_on_a_full_disk_fails_cleanly_and_reruns(clean_store: Path, tmp_path: Path,
                                                        monkeypatch, capsys) -> None:
    out = tmp_path / "store"
    monkeypatch.setattr(files, "open", harness.full_disk_open("00002.texts.npy.tmp"),
                        raising=False)
    assert main(_encode_argv(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device writing" in err
    assert "00002.texts.npy" in err and not list(out.rglob("*.tmp"))
    monkeypatch.undo()  # space freed
    assert main(_encode_argv(out)) == 0
    harness.same_store(out, clean_store)


@pytest.mark.parametrize("name", ["ckpt-00000008.safetensors.tmp", "latest.json.tmp",
                                  "heads.safetensors.tmp"])
def test_checkpoint_on_a_full_disk_fails_cleanly_and_resumes(train_store: Path, clean_run,
                                                             tmp_path: Path, monkeypatch,
                                                             name: str) -> None:
    run, config = tmp_path / "run", harness.train_config(train_store)
    monkeypatch.setattr(files, "open", harness.full_disk_open(name), raising=False)
    with pytest.raises(DiskFullError, match="no space left on the device"):
        train_sail(config, run, progress=False)
    monkeypatch.undo()
    assert not list(run.glob("*.tmp"))
    load_checkpoint(run)  # the newest checkpoint is whole
    train_sail(config, run, resume=True, progress=False)
    _same_heads(run, clean_run[0])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(fs: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``fs``."""
    stat = os.statvfs(fs)
    ballast = fs / "ballast"
    ballast.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


def test_real_small_filesystem_fills_during_encode_and_checkpointing(
        small_fs: Path, clean_store: Path, train_store: Path, clean_run) -> None:
    store = small_fs / "store"
    shard_bytes = sum(p.stat().st_size for p in clean_store.glob("shards/00000.*"))
    ballast = _fill(small_fs, 2 * shard_bytes)
    with pytest.raises(DiskFullError):
        harness.encode(store, DATA)
    assert not list(store.rglob("*.tmp"))
    assert json.loads((store / "manifest.json").read_text())["status"] == "encoding"
    ballast.unlink()
    harness.encode(store, DATA)
    harness.same_store(store, clean_store)

    run, config = small_fs / "run", harness.train_config(train_store)
    checkpoint = (clean_run[0] / "ckpt-00000015.safetensors").stat().st_size
    ballast = _fill(small_fs, int(1.5 * checkpoint) + 65536)
    with pytest.raises(DiskFullError, match="ckpt-00000008.safetensors"):
        train_sail(config, run, progress=False)
    assert not list(run.glob("*.tmp")) and load_checkpoint(run)[1]["step"] == 4
    ballast.unlink()
    train_sail(config, run, resume=True, progress=False)
    _same_heads(run, clean_run[0])
