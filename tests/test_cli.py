"""CLI: every command listed in --help, user mistakes give one line and exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

from vlalign.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("encode", "info", "train", "classify", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encode", "--vision", "nope:x", "--text", "bundled:bow", "--data", "digits:train",
          "--out", "{tmp}/s"], "unknown scheme 'nope'"),
        (["encode", "--vision", "bundled:resnet", "--text", "bundled:bow", "--data",
          "digits:train", "--out", "{tmp}/s"], "unknown bundled vision model 'resnet'"),
        (["encode", "--vision", "bundled:pixels", "--text", "bundled:bow", "--data",
          "mnist:train", "--out", "{tmp}/s"], "unknown dataset 'mnist'"),
        (["encode", "--vision", "bundled:pixels", "--text", "bundled:bow", "--data",
          "csv:{tmp}/missing.csv", "--out", "{tmp}/s"], "missing.csv"),
        (["info", "{tmp}"], "is not a feature store"),
        (["train", "sail", "--out", "{tmp}/run"], "no training store"),
        (["train", "sail", "--store", "{tmp}", "--out", "{tmp}/run", "--set", "batch_size=x"],
         "batch_size: expected int"),
        (["train", "sail", "--store", "{tmp}", "--out", "{tmp}/run", "--config",
          "{tmp}/nope.yaml"], "config file not found"),
        (["classify", "--model", "{tmp}", "x.png", "--labels", "a"], "is not a vlalign model"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, message, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("vlalign: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_bad_option_is_argparse_exit_2():
    result = subprocess.run([sys.executable, "-m", "vlalign", "encode", "--bogus"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "m", "--workers", "-1"],
    ["encode", "--vision", "v", "--text", "t", "--data", "d", "--out", "o", "--workers", "two"],
])
def test_a_bad_worker_count_is_argparse_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "expected a whole number >= 0" in err[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="--device cuda is valid with CUDA")
def test_eval_on_a_missing_gpu_is_one_line_exit_2(capsys):
    code = main(["eval", "--model", "m", "--device", "cuda", "--task", "knn", "--dataset",
                 "digits:test"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "vlalign: error: device cuda requested but CUDA is not available"

def test_encode_info_train_classify_end_to_end(tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["encode", "--vision", "bundled:pixels?size=8", "--text", "bundled:bow",
                 "--data", "digits:train[:400]", "--out", str(store), "--quiet",
                 "--workers", "0"]) == 0
    assert main(["info", str(store), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out.split("store ready")[-1].split("\n", 1)[1])
    assert info["rows"] == 400 and info["image_dim"] == 192
    assert main(["train", "sail", "--store", str(store), "--val-store", str(store), "--out",
                 str(run), "--quiet", "--set", "batch_size=100", "--set", "epochs=2",
                 "--set", "embed_dim=16", "--set", "vision_head.kind=linear"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    assert metrics["step"] == 8 and "val/digits:train[:400]/acc1" in metrics
    from PIL import Image
    from sklearn.datasets import load_digits

    image = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[0] * 16).astype("uint8")).save(image)
    assert main(["classify", "--model", str(run), str(image), "--labels", "zero", "one",
                 "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and "zero" in line and "one" in line
