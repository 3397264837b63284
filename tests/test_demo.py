"""`make demo` in miniature: the real bundled encoders and data, a few hundred items, down to the
HTML report, which is parsed to check every plot is embedded and every table filled."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from vlalign import demo
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.data.templates import templates_for
from vlalign.demo import QUICK, run_demo
from vlalign.errors import StoreError
from vlalign.models import load_model

PNG = b"\x89PNG\r\n\x1a\n"


class ReportParser(HTMLParser):
    """Collects the images (alt, src) and the text of every table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images[attrs["alt"]] = attrs["src"]
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def _check_uta(out: Path, summary: dict[str, float]) -> None:
    """The teacher's number is the SAIL model's in the main suite (same model, same job) and
    beats chance; the student's is that of the saved student, recomputed here."""
    suite = {(r["model"], r["task"], r["vlalign"]["spec"]): r["metrics"]
             for r in json.loads((out / "eval" / "results.json").read_text())}
    fashion = suite["sail", "zeroshot_classification", QUICK.fashion_test]["acc1"]
    assert summary["uta/sail_teacher/fashion_mnist/acc1"] == round(fashion, 4) > 0.3  # 0.1: chance
    student = load_model(out / "uta")
    source = create_benchmark(QUICK.fashion_test)
    items = [source.load(i) for i in range(len(source))]
    probs = student.classify([item.image for item in items], source.class_names,
                             templates_for(source.name))
    hits = probs.argmax(dim=1) == torch.tensor([item.label for item in items])
    assert summary["uta/uta_student/fashion_mnist/acc1"] == pytest.approx(
        hits.float().mean().item(), abs=1e-4)
    config = json.loads((out / "uta" / "config.json").read_text())
    assert config["targets"] == "store"  # the student learnt from the cached stored targets


def _check_overview(out: Path, summary: dict[str, float]) -> None:
    """The report opens with the overview: what was trained on what, the headline numbers with
    the controls' beside them (the suite's own numbers), the student next to its teacher."""
    overview = json.loads((out / "overview.json").read_text())
    suite = {(r["model"], r["task"], r["vlalign"]["spec"]): r["metrics"]
             for r in json.loads((out / "eval" / "results.json").read_text())}
    headline, uta = overview["tables"]
    assert headline["header"] == ["metric", "SAIL", "linear heads", "untrained heads"]
    first = headline["rows"][0]
    assert first[0] == "Fashion-MNIST zero-shot acc1"
    assert first[1:] == [suite[m, "zeroshot_classification", QUICK.fashion_test]["acc1"]
                         for m in ("sail", "linear_heads", "random_heads")]
    assert uta["rows"][0][1] == summary["uta/uta_student/fashion_mnist/acc1"]
    assert any("bundled:mobilenetv2" in line for line in overview["lines"])
    markdown = (out / "report.md").read_text()
    assert markdown.index("## What was trained") < markdown.index("## Every key number")
    stages = {"encode", "train_sail", "evaluate", "probe", "uta"}
    assert stages <= {key.split("/")[1] for key in summary if key.startswith("seconds/")}


def _check_probe(out: Path, summary: dict[str, float]) -> None:
    """The summary's correlations are Pearson's r of probe.json's per-encoder numbers."""
    probe = json.loads((out / "probe" / "probe.json").read_text())
    specs = list(probe["vision"])
    alignment = [np.mean([p["alignment"] for p in probe["pairs"] if p["vision"] == v])
                 for v in specs]
    for name, key in (("knn", "knn_acc@20"), ("linear_probe", "lp_acc1")):
        quality = [probe["vision"][v][f"fashion-mnist/{key}"] for v in specs]
        assert summary[f"probe/pearson(alignment, {name})"] == pytest.approx(
            np.corrcoef(alignment, quality)[0, 1], abs=1e-4)


def test_quick_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for key in ("sail/fashion_mnist/acc1", "sail/emoji/image_retrieval_recall@1",
                "sail/emoji/text_retrieval_recall@5", "sail_emoji_only/fashion_mnist_transfer/acc1",
                "sail_emoji_only/emoji/text_retrieval_recall@5"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["sail/fashion_mnist/acc1"] > 0.3  # chance is 0.1, even after a few steps
    assert "| sail/fashion_mnist/acc1 |" in (out / "summary.md").read_text()
    # UTA: the distilled student and its teacher, zero-shot through the evaluation suite
    _check_uta(out, summary)
    assert (out / "uta" / "student.safetensors").is_file()
    _check_overview(out, summary)
    # the probe grid: every vision x text pair and the two correlations
    assert sum(key.endswith("/alignment") for key in summary) == 8
    _check_probe(out, summary)

    # the evaluation suite: every task for the model, the alignment tasks for both controls,
    # in CLIP_benchmark's record shape
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {r["model"] for r in results} == {"sail", "linear_heads", "random_heads"}
    assert len({r["task"] for r in results}) == 7
    control_tasks = {r["task"] for r in results if r["model"] == "random_heads"}
    assert control_tasks == {"zeroshot_classification", "zeroshot_retrieval",
                             "image_caption_selection", "mmvp"}
    assert all(set(r) == {"dataset", "model", "pretrained", "task", "metrics", "language",
                          "vlalign"} for r in results)
    assert {r["dataset"] for r in results} == {
        "fashion-mnist", "emoji", "emoji-pairs", "emoji-mmvp", "emoji-canvas/name",
        "emoji-canvas/subcategory"}
    assert "image_caption_selection" in {r["task"] for r in results}
    header = (out / "eval" / "results.csv").read_text().splitlines()[0]
    assert header == "task,dataset,metric,sail,linear_heads,random_heads"

    # the report: every plot embedded as a PNG, every table cell filled
    parser = ReportParser()
    parser.feed((out / "report.html").read_text())
    names = set(parser.images)
    assert "training_curves" in names and "eval_overview" in names
    assert "probe_scatter_fashion-mnist" in names and "probe_heat_map" in names
    for prefix, suffix in (("zeroshot_classification__fashion-mnist", ""),
                           ("zeroshot_retrieval__emoji", "_t2i"),
                           ("zeroshot_retrieval__emoji", "_i2t"),
                           ("zeroshot_segmentation__emoji-canvas", "")):
        assert any(prefix in name and name.endswith(suffix) for name in names), prefix + suffix
    for src in parser.images.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert parser.cells and all(cell.strip() for cell in parser.cells)
    markdown = (out / "report.md").read_text()
    assert all(f"report_files/{name}.png" in markdown for name in names)
    assert all((out / "report_files" / f"{name}.png").is_file() for name in names)


def test_a_demo_folder_of_an_older_vlalign_starts_over(tmp_path, monkeypatch, caplog):
    """Stores refused as stale (another image transform, say) restart the whole demo folder:
    the runs in it were trained on them, so nothing stale is reused or evaluated."""
    out = tmp_path / "demo"
    (out / "stores" / "fashion_train").mkdir(parents=True)
    (out / "sail").mkdir()
    (out / "sail" / "heads.json").write_text("{}")
    (out / "summary.json").write_text("{}")
    calls = []

    def encode_all(size, root):
        calls.append(sorted(p.name for p in out.iterdir()))
        if len(calls) == 1:
            raise StoreError(f"{root / 'fashion_train'} holds image features made with another "
                             "image transform")
        return {}

    monkeypatch.setattr(demo, "_encode_all", encode_all)
    assert demo._stores_of(out, demo.QUICK) == {}
    assert calls == [["sail", "stores", "summary.json"], []]  # emptied before encoding again
    assert "made by an older vlalign" in caplog.text

    def refused(size, root):
        raise StoreError("features do not fit float16")

    monkeypatch.setattr(demo, "_encode_all", refused)
    with pytest.raises(StoreError, match="float16"):  # a fresh folder's error is the user's
        demo._stores_of(tmp_path / "fresh", demo.QUICK)
