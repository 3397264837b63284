"""`make demo` in miniature: the real bundled encoders and data, a few hundred items, down to the
HTML report, which is parsed to check every plot is embedded and every table filled."""

import base64
import json
from html.parser import HTMLParser

from vlalign.demo import run_demo

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
    for model in ("uta_student", "sail_teacher"):
        assert 0.0 <= summary[f"uta/{model}/fashion_mnist/acc1"] <= 1.0
        assert 0.0 <= summary[f"uta/{model}/emoji/image_retrieval_recall@5"] <= 1.0
    assert (out / "uta" / "student.safetensors").is_file()
    # the probe grid: every vision x text pair and the two correlations
    assert sum(key.endswith("/alignment") for key in summary) == 8
    assert -1 <= summary["probe/pearson(alignment, knn)"] <= 1

    # the evaluation suite: every task for the model and both controls, CLIP_benchmark shape
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {r["model"] for r in results} == {"sail", "linear_heads", "random_heads"}
    assert len({r["task"] for r in results}) == 7
    assert all(set(r) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
               for r in results)
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
