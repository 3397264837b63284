"""SAIL trainer: learns, refuses to overwrite a run, evaluates on schedule (kill -9, NaN and
other faults: tests/faults/)."""

import json
from pathlib import Path

import pytest

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.eval.stored import store_evaluator
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, encode_store
from vlalign.train.config import OptimConfig
from vlalign.utils.checkpoint import load_tensors

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
    assert set(heads) == {"method", "step", "embed_dim", "vision_head", "text_head", "loss",
                          "vision", "text", "positives"}
    tensors = load_tensors(tmp_path / "run" / "heads.safetensors")
    assert {"loss.log_scale", "loss.bias"} <= set(tensors)  # the loss's scale and bias are kept


def test_existing_run_needs_resume(digit_store, tmp_path):
    train_sail(_config(digit_store), tmp_path / "run", progress=False, max_steps=5)
    with pytest.raises(UserError, match="pass --resume"):
        train_sail(_config(digit_store), tmp_path / "run", progress=False)


def test_evaluation_runs_on_its_own_schedule(digit_store, tmp_path):
    config = _config(digit_store, eval_every=3, log_every=5)
    train_sail(config, tmp_path / "run", evaluate=store_evaluator([str(digit_store)]),
               progress=False, max_steps=10)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line["step"] for line in lines if "val/digits:train/acc1" in line]
    assert evaluated == [3, 6, 9, 10] and [line["step"] for line in lines] == [3, 5, 6, 9, 10]
