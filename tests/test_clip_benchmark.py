"""CLIP_benchmark on a vlalign model: its CLI (``--model_type vlalign``) gives `vlalign eval`'s
numbers on the same data, and its ``build`` merges a vlalign results folder.

The data is offline: digits test images written as CLIP_benchmark webdatasets
(``--dataset wds/NAME --dataset_root DIR``: ``test/0.tar`` + ``nshards.txt``, class names and
templates for classification, ``dataset_type.txt`` = retrieval with one caption per image), read
by vlalign as ``digits:test[:N]`` (the same images and labels) and ``wds:DIR/test/0.tar`` (the
same tar). The model is a tiny SAIL run trained on the bundled pixel and bag-of-words encoders.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

# Skipped without the package; with it, a dependency it lacks (requests) fails loudly.
pytest.importorskip("clip_benchmark", reason="pip install 'vlalign[clip-benchmark]'")
import clip_benchmark.cli  # noqa: E402, F401

from harness import encode, train_config  # noqa: E402
from vlalign.cli import main as vlalign_main  # noqa: E402
from vlalign.data import create_source  # noqa: E402
from vlalign.data.templates import format_prompt, templates_for  # noqa: E402
from vlalign.eval import clip_benchmark as bench  # noqa: E402
from vlalign.eval.run import Job, details_file, run_suite  # noqa: E402
from vlalign.eval.tasks import Context  # noqa: E402
from vlalign.models import load_model  # noqa: E402
from vlalign.sail.train import train_sail  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),  # CLIP_benchmark's WebDataset call:
              pytest.mark.filterwarnings("ignore:WebDataset.shardshuffle")]
TEST = "digits:test[:120]"
PER_CLASS = 5  # retrieval: this many images per digit, each with its own template's caption


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAIL run on digits (8 px pixels + 64-d bag of words), a few hundred steps' worth
    of nothing: 3 epochs of 400 images."""
    root = tmp_path_factory.mktemp("cb_run")
    encode(root / "store", "digits:train[:400]")
    run = root / "sail"
    train_sail(train_config(root / "store"), run, progress=False)
    return run


def _tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")  # lossless: CLIP_benchmark decodes the pixels vlalign reads
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wds/digits (classification, = TEST) and wds/digits_captions (retrieval) under one root."""
    root = tmp_path_factory.mktemp("cb_data")
    source = create_source(TEST)
    items = [source.load(i) for i in range(len(source))]
    _tar(root / "digits" / "test" / "0.tar",
         {f"{i:04d}.{ext}": value for i, item in enumerate(items)
          for ext, value in (("png", _png(item.image)), ("cls", str(item.label).encode()))})
    (root / "digits" / "classnames.txt").write_text("\n".join(source.class_names) + "\n")
    templates = templates_for(TEST)
    assert all("{a}" not in t for t in templates)  # CLIP_benchmark fills {c} only
    (root / "digits" / "zeroshot_classification_templates.txt").write_text(
        "\n".join(templates) + "\n")
    seen: dict[int, int] = {}
    members = {}
    for i, item in enumerate(items):  # distinct captions: (digit, template) pairs, no ties
        t = seen[item.label] = seen.get(item.label, -1) + 1
        if t < PER_CLASS:
            caption = format_prompt(templates[t], source.class_names[item.label])
            members |= {f"{i:04d}.png": _png(item.image), f"{i:04d}.txt": caption.encode()}
    _tar(root / "digits_captions" / "test" / "0.tar", members)
    (root / "digits_captions" / "dataset_type.txt").write_text("retrieval\n")
    for name in ("digits", "digits_captions"):
        (root / name / "test" / "nshards.txt").write_text("1\n")
    return root


def _clip_benchmark_eval(run: Path, data: Path, out: Path, dataset: str, task: str) -> dict:
    code = bench.main([
        "eval", "--model_type", "vlalign", "--model", str(run), "--dataset", f"wds/{dataset}",
        "--dataset_root", str(data / "{dataset}"), "--task", task, "--recall_k", "1", "5", "10",
        "--no_amp", "--num_workers", "0", "--batch_size", "16", "--quiet",
        "--output", str(out / "{model}" / "{task}__{dataset}.json")])
    assert code == 0
    return json.loads((out / run.name / f"{task}__{dataset}.json").read_text())


def test_clip_benchmark_cli_gives_vlalign_eval_numbers(run: Path, data: Path,
                                                       tmp_path: Path) -> None:
    """Zero-shot classification and retrieval through CLIP_benchmark's own CLI and metrics on
    the vlalign model: the numbers of `vlalign eval` on the same images; records alike."""
    jobs = (Job("zeroshot_classification", TEST),
            Job("zeroshot_retrieval", f"wds:{data / 'digits_captions' / 'test' / '0.tar'}"))
    ours = run_suite({run.name: (load_model(run), str(run))}, jobs, tmp_path / "ours",
                     Context(batch_size=16, progress=False))
    theirs = [_clip_benchmark_eval(run, data, tmp_path / "cb", "digits",
                                   "zeroshot_classification"),
              _clip_benchmark_eval(run, data, tmp_path / "cb", "digits_captions",
                                   "zeroshot_retrieval")]
    for mine, other in zip(ours, theirs, strict=True):
        assert {k: mine[k] for k in ("model", "pretrained", "task", "language")} == {
            k: other[k] for k in ("model", "pretrained", "task", "language")}
        assert set(other["metrics"]) <= set(mine["metrics"])
        for key, value in other["metrics"].items():
            assert mine["metrics"][key] == pytest.approx(value, abs=1e-6), key
    classification, retrieval = (r["metrics"] for r in ours)
    assert set(theirs[0]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert len(theirs[1]["metrics"]) == 6
    assert classification["acc1"] > 0.2  # trained: chance is 0.1
    assert 0 < retrieval["image_retrieval_recall@1"] < 1  # neither trivial nor broken
    assert ours[0]["dataset"] == "digits" and ours[1]["dataset"] == "digits_captions"
    assert ours[0]["vlalign"] == {"name": run.name, "task": "zeroshot_classification",
                                  "spec": TEST, "train_spec": None, "skipped": 0}
    # while it ran, and only then, CLIP_benchmark had the vlalign type and the fixed accuracy
    from clip_benchmark import models
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    assert "vlalign" not in models.MODEL_TYPES and "vlalign" not in models.TYPE2FUNC
    assert bench.accuracy not in (zeroshot_classification.accuracy, linear_probe.accuracy)


def test_clip_benchmark_build_merges_a_vlalign_results_folder(
        run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The suite layout: records in OUT/<name>/, details in OUT/<name>/details/, results.json
    beside; CLIP_benchmark's own build reads a model folder, and through vlalign the suite
    folder as it is."""
    from clip_benchmark.cli import main_build

    jobs = (Job("zeroshot_classification", TEST),
            Job("zeroshot_retrieval", f"wds:{data / 'digits_captions' / 'test' / '0.tar'}"))
    out = tmp_path / "results"
    records = run_suite({"tiny": (load_model(run), str(run))}, jobs, out,
                        Context(batch_size=16, progress=False))
    record_file = out / "tiny" / f"{jobs[0].slug}.json"
    assert json.loads(record_file.read_text()) == records[0]
    assert details_file(record_file) == out / "tiny" / "details" / f"{jobs[0].slug}.json"
    assert details_file(record_file).is_file()
    assert details_file(record_file, ".npz").is_file()  # the confusion matrix

    main_build(argparse.Namespace(files=[str(out / "tiny")], output=str(tmp_path / "a.csv")))
    rows = sorted(csv.DictReader((tmp_path / "a.csv").open()), key=lambda row: row["task"])
    assert [row["task"] for row in rows] == ["zeroshot_classification", "zeroshot_retrieval"]
    assert {row["model_fullname"] for row in rows} == {f"tiny {run}"}
    assert [row["dataset"] for row in rows] == ["digits", "digits_captions"]
    assert float(rows[0]["acc1"]) == pytest.approx(records[0]["metrics"]["acc1"])

    assert bench.main(["build", str(out), "--output", str(tmp_path / "b.csv")]) == 0
    assert sorted(csv.DictReader((tmp_path / "b.csv").open()),
                  key=lambda row: row["task"]) == rows
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert vlalign_main(["clip-benchmark", "build", str(tmp_path / "empty")]) == 2
    assert "no result records" in capsys.readouterr().err


def test_accuracy_replacement_is_clip_benchmarks_computation() -> None:
    """Top-k accuracy as CLIP_benchmark computes it (its own raises under numpy >= 2.4)."""
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.0, 0.4, 0.6]])
    target = torch.tensor([0, 1, 1, 2])
    assert bench.accuracy(logits, target, topk=(1, 2)) == [0.75, 1.0]


def test_missing_clip_benchmark_is_one_line_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "clip_benchmark.cli", None)  # import -> ImportError
    assert vlalign_main(["clip-benchmark", "eval", "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'vlalign[clip-benchmark]'" in err
