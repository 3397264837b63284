"""`make demo` in miniature: the real bundled encoders and data, a few hundred items."""

import json

from vlalign.demo import run_demo


def test_quick_demo_runs_end_to_end(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved == summary
    for key in ("sail/fashion_mnist/acc1", "sail/emoji/image_retrieval_recall@1",
                "sail/emoji/text_retrieval_recall@5", "sail_emoji_only/fashion_mnist_transfer/acc1",
                "sail_emoji_only/emoji/text_retrieval_recall@5"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["sail/fashion_mnist/acc1"] > 0.3  # chance is 0.1, even after a few steps
    assert "| sail/fashion_mnist/acc1 |" in (tmp_path / "demo" / "summary.md").read_text()
