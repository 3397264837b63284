"""SAIL trainer: learns, resumes exactly after kill -9, stops on NaN keeping the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.eval.stored import store_evaluator
from vlalign.sail import train as train_module
from vlalign.sail.config import HeadConfig, OptimConfig, SailConfig
from vlalign.sail.train import TrainingDiverged, train_sail
from vlalign.store import EncodeOptions, encode_store

VISION, TEXT = "bundled:pixels?size=8", "bundled:bow?dim=64"


@pytest.fixture(scope="module")
def digit_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "digits"
    encode_store(create_source("digits:train"), create_vision_encoder(VISION),
                 create_text_encoder(TEXT), out, kinds=["raw", "rewritten"], specs=(VISION, TEXT),
                 options=EncodeOptions(shard_size=512, num_workers=0, progress=False))
    return out


def _config(store: Path, **changes) -> SailConfig:
    config = SailConfig(train_stores=[str(store)], vision_head=HeadConfig("glu", 2),
                        text_head=HeadConfig("glu", 2), embed_dim=32, batch_size=100, epochs=4,
                        optim=OptimConfig(lr=1e-3), loss_block_size=32, checkpoint_every=5,
                        log_every=5, precision="fp32", num_threads=1)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_training_learns_the_digits(digit_store, tmp_path):
    evaluate = store_evaluator([str(digit_store)])
    metrics = train_sail(_config(digit_store), tmp_path / "run", evaluate=evaluate,
                         progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 60 and lines[-1]["loss"] < lines[0]["loss"]
    assert metrics["val/digits:train/acc1"] > 0.5  # chance is 0.1
    heads = json.loads((tmp_path / "run" / "heads.json").read_text())
    assert heads["vision"]["spec"] == VISION and heads["vision_head"]["kind"] == "glu"


def test_existing_run_needs_resume(digit_store, tmp_path):
    train_sail(_config(digit_store), tmp_path / "run", progress=False, max_steps=5)
    with pytest.raises(UserError, match="pass --resume"):
        train_sail(_config(digit_store), tmp_path / "run", progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digit_store, tmp_path,
                                                              monkeypatch):
    forward = train_module.SailModule.forward
    calls = {"n": 0}

    def poisoned(self, images, texts):
        calls["n"] += 1
        loss, terms = forward(self, images, texts)
        return (loss * float("nan"), terms) if calls["n"] == 8 else (loss, terms)

    monkeypatch.setattr(train_module.SailModule, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss = nan at step 7.*step 5"):
        train_sail(_config(digit_store), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 5


def _train_cmd(store: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vlalign", "train", "sail", "--store", str(store), "--out",
            str(out), "--quiet", "--set", "embed_dim=32", "--set", "batch_size=100",
            "--set", "epochs=6", "--set", "checkpoint_every=3", "--set", "precision=fp32",
            "--set", "vision_head.width_factor=4", "--set", "optim.lr=1e-3",
            "--set", "num_threads=1", "--set", "loss_block_size=32"]


def test_kill_9_then_resume_reaches_the_same_weights(digit_store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd(digit_store, killed), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "latest.json").exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "heads.json").exists(), "the kill must land mid-run"
    subprocess.run(_train_cmd(digit_store, killed) + ["--resume"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    clean = tmp_path / "clean"
    subprocess.run(_train_cmd(digit_store, clean), env=env, check=True, stdout=subprocess.DEVNULL)
    a = load_file(str(killed / "heads.safetensors"))
    b = load_file(str(clean / "heads.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "resumed metrics must not repeat steps"


def test_evaluation_runs_on_its_own_schedule(digit_store, tmp_path):
    config = _config(digit_store, eval_every=3, log_every=5)
    train_sail(config, tmp_path / "run", evaluate=store_evaluator([str(digit_store)]),
               progress=False, max_steps=10)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line["step"] for line in lines if "val/digits:train/acc1" in line]
    assert evaluated == [3, 6, 9, 10] and [line["step"] for line in lines] == [3, 5, 6, 9, 10]
