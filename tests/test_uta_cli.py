"""`vlalign train uta`, `vlalign finetune` and `vlalign classify` on a UTA run, through
cli.main: exit code 0 on tiny set-ups, 2 and one line on user mistakes; and under torchrun,
two ranks equal one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiny_models import save_sail_teacher
from vlalign.cli import main
from vlalign.data import create_source
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.eval.finetune import FinetuneConfig, finetune
from vlalign.eval.tasks import Context, zeroshot_classification
from vlalign.models import load_model
from vlalign.utils.checkpoint import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uta_cli")
    teacher = save_sail_teacher(root / "sail")
    path = root / "uta.yaml"
    path.write_text(yaml.safe_dump({
        "teacher": f"sail:{teacher}", "student": {"dim": 32, "depth": 1, "heads": 2},
        "data": ["digits:train[:32]"], "batch_size": 8, "epochs": 1, "precision": "fp32",
        "device": "cpu", "log_every": 2, "checkpoint_every": 2,
        "eval": {"zeroshot": ["digits:test[:16]"]}}))
    return path


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vlalign: error: ")
    return err


def test_train_finetune_classify(recipe: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "uta", "--config", str(recipe), "--out", str(run), "--quiet",
                 "--set", "mask.ratio=0.25", "--max-steps", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    assert metrics["step"] == 3
    # the evaluator's model during training is the saved model: same zero-shot accuracy
    digits = create_benchmark("digits:test[:16]", "data")
    saved = zeroshot_classification(load_model(run), digits, None, Context(progress=False))
    assert metrics["val/digits:test[:16]/acc1"] == pytest.approx(saved.metrics["acc1"])
    assert main(["train", "uta", "--config", str(recipe), "--out", str(run), "--quiet",
                 "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["step"] == 4

    common = ["finetune", "--model", str(run), "--data", "digits:train[:32]", "--test-data",
              "digits:test[:16]", "--quiet", "--device", "cpu"]
    assert main(common) == 0
    probe = finetune(run, "digits:train[:32]", "digits:test[:16]", FinetuneConfig(device="cpu"),
                     progress=False)  # the same probe through the Python API
    assert json.loads(capsys.readouterr().out)["lp_acc1"] == probe["metrics"]["lp_acc1"]
    assert main([*common, "--mode", "full", "--from-scratch", "--epochs", "1",
                 "--batch-size", "8", "--precision", "fp32", "--out", str(tmp_path / "ft")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["steps"] == 4

    image = tmp_path / "digit.png"
    create_source("digits:test").load(0).image.save(image)
    assert main(["classify", "--model", str(run), str(image), "--labels", "zero", "one"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_user_mistakes_are_one_line(recipe: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "run")
    assert main(["train", "uta", "--config", str(recipe), "--out", out, "--quiet",
                 "--set", "objective=mae"]) == 2
    assert "objective: 'mae' is not one of uta, mim, distill" in _error_line(capsys)
    assert main(["train", "uta", "--config", str(recipe), "--out", out, "--quiet",
                 "--set", "mask.ratio=1.5"]) == 2
    assert "mask.ratio" in _error_line(capsys)
    assert main(["train", "uta", "--config", str(recipe), "--out", out, "--quiet",
                 "--set", "teacher=sail:/nowhere"]) == 2
    _error_line(capsys)
    assert main(["finetune", "--model", out, "--data", "digits:train[:8]", "--test-data",
                 "digits:test[:8]", "--quiet"]) == 2
    assert "not a UTA model" in _error_line(capsys)


def test_two_ranks_under_torchrun_equal_one_process(recipe: Path, tmp_path: Path) -> None:
    """DDP on gloo: each rank trains on half of every global batch, with the global batch's
    masks and augmentations; gradients are averaged, so the weights match one process."""
    argv = ["train", "uta", "--config", str(recipe), "--quiet", "--max-steps", "3",
            "--set", "augment=true", "--set", "eval.zeroshot=[]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "vlalign", *argv, "--out",
                           str(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = load_tensors(tmp_path / "one" / "student.safetensors")
    two = load_tensors(tmp_path / "two" / "student.safetensors")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-5)
