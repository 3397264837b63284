"""The probe report section: pair, vision, text and correlation tables, scatter plots of
alignment against k-NN and linear-probe accuracy, and a vision x text heat map."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlalign.probe.run import KNN_K
from vlalign.report import plots
from vlalign.report.render import Figure, Section

Table = tuple[list[str], list[list[Any]]]

EXPLANATION = (
    "Alignment = held-out image-caption retrieval after training one linear layer per side "
    "(sigmoid loss) on frozen features: recall@10 averaged over text-to-image and image-to-text "
    "(SAIL's probing metric). k-NN accuracy (DINO-style weighted vote, cosine, T = 0.07) measures "
    "clustering; linear-probe accuracy (logistic regression, weight decay chosen on validation) "
    "measures linear separability. Text encoders get a paraphrase score: each emoji's Unicode name "
    "must retrieve its own descriptive sentence among all sentences, and back (recall@1, "
    "averaged), i.e. does the encoder see that two differently worded captions mean the same "
    "thing. Correlations are across vision encoders, with 95% percentile-bootstrap intervals; "
    "'k-NN minus LP' is the paired bootstrap of the difference of the two Pearson r.")


def pair_table(result: dict[str, Any]) -> Table:
    """One row per (vision, text) pair, best aligned first."""
    header = ["vision", "text", "alignment", "image_retrieval_recall@1", "text_retrieval_recall@1",
              "image_retrieval_recall@10", "text_retrieval_recall@10"]
    pairs = sorted(result["pairs"], key=lambda p: -p["alignment"])
    return header, [[p.get(h) for h in header] for p in pairs]


def vision_table(result: dict[str, Any]) -> Table:
    """One row per vision encoder: mean alignment over text encoders, k-NN and probe accuracy."""
    keys = sorted({k for m in result["vision"].values() for k in m
                   if k.endswith(("knn_acc@10", "knn_acc@20", "knn_acc@100", "knn_acc@200",
                                  "lp_acc1"))}, key=_natural)
    rows = [[spec, _mean_alignment(result, spec), *(metrics.get(k) for k in keys)]
            for spec, metrics in result["vision"].items()]
    return ["vision", "mean alignment", *keys], sorted(rows, key=lambda r: -r[1])


def text_table(result: dict[str, Any]) -> Table:
    """One row per text encoder: mean alignment over vision encoders and its paraphrase score."""
    rows = [[spec, float(np.mean([p["alignment"] for p in result["pairs"] if p["text"] == spec])),
             metrics.get("paraphrase_r@1")] for spec, metrics in result["text"].items()]
    return ["text", "mean alignment", "paraphrase_r@1"], rows


def correlation_table(result: dict[str, Any]) -> Table:
    """Pearson and Spearman (95% bootstrap CI) of alignment with k-NN and with linear probing."""
    def interval(c: dict[str, float], name: str) -> str:
        return f"{c[name]:.3f} [{c[name + '_low']:.3f}, {c[name + '_high']:.3f}]"

    header = ["alignment of", "labelled set", f"Pearson vs k-NN@{KNN_K}",
              "Pearson vs linear probe", f"Spearman vs k-NN@{KNN_K}", "Spearman vs linear probe",
              "Pearson k-NN minus LP"]
    rows = []
    for key, value in result["correlations"].items():
        group, data = key.split(" | ")
        diff = value["knn_minus_lp_pearson"]
        rows.append([group, data, interval(value["knn"], "pearson"),
                     interval(value["linear_probe"], "pearson"),
                     interval(value["knn"], "spearman"),
                     interval(value["linear_probe"], "spearman"),
                     f"{diff['difference']:.3f} [{diff['low']:.3f}, {diff['high']:.3f}]"])
    return header, rows


def _natural(key: str) -> tuple[str, int]:
    """``fashion-mnist/knn_acc@100`` sorts after ``.../knn_acc@20``; ``lp_acc1`` after k-NN."""
    stem, _, k = key.partition("@")
    return stem, int(k) if k.isdigit() else 0


def _mean_alignment(result: dict[str, Any], vision: str) -> float:
    return float(np.mean([p["alignment"] for p in result["pairs"] if p["vision"] == vision]))


def _scatter(result: dict[str, Any], data: str) -> Figure:
    """Mean alignment over text encoders against k-NN and linear-probe accuracy on ``data``."""
    specs = list(result["vision"])
    alignment = np.array([_mean_alignment(result, v) for v in specs])
    corr = result["correlations"][f"mean over text encoders | {data}"]
    panels = [(f"k-NN accuracy (k={KNN_K}), {data}",
               np.array([result["vision"][v][f"{data}/knn_acc@{KNN_K}"] for v in specs]),
               corr["knn"]),
              (f"linear-probe accuracy, {data}",
               np.array([result["vision"][v][f"{data}/lp_acc1"] for v in specs]),
               corr["linear_probe"])]
    png = plots.alignment_scatter(panels, alignment, [plots.short_spec(v) for v in specs],
                                  "alignment (mean over text encoders) per vision encoder")
    return Figure(f"probe_scatter_{data}", png,
                  f"Alignment against clustering (k-NN) and linear separability on {data}.")


def probe_section(result: dict[str, Any], where: str) -> Section:
    """Everything a probe.json holds, as tables and plots."""
    title = "Alignment probe" if where == "." else f"Alignment probe: {where}"
    section = Section(title, [EXPLANATION],
                      [pair_table(result), vision_table(result), text_table(result)])
    if result["correlations"]:
        section.tables.append(correlation_table(result))
        labelled = sorted({k.split(" | ")[1] for k in result["correlations"]})
        section.figures += [_scatter(result, data) for data in labelled]
    else:
        section.paragraphs.append("Correlations need at least three vision encoders.")
    vision, text = list(result["vision"]), list(result["text"])
    grid = {(p["vision"], p["text"]): p["alignment"] for p in result["pairs"]}
    values = np.array([[grid[v, t] for t in text] for v in vision])
    section.figures.append(Figure("probe_heat_map", plots.heat_map(
        values, [plots.short_spec(v) for v in vision], [plots.short_spec(t) for t in text],
        "alignment (mean R@10), vision x text"), "Alignment of every vision x text pair."))
    return section
