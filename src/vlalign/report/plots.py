"""Matplotlib figures for the report, each returned as PNG bytes (headless Agg backend)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from vlalign.utils.optional import require

require("matplotlib", "eval").use("Agg")  # headless; a one-line error without the extra
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

IGNORE_COLOUR = (0, 0, 0, 0)
CURVE_METRICS = ("/acc1", "recall@5")  # held-out metrics drawn against step


def to_png(figure: Figure) -> bytes:
    """Render and close a figure."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def training_curves(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    """Loss (left) and every held-out metric (right) against step, one colour per run."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, rows in runs.items():
        steps = [r["step"] for r in rows if "loss" in r]
        left.plot(steps, [r["loss"] for r in rows if "loss" in r], label=name)
        val_keys = sorted({k for r in rows for k in r
                           if k.startswith("val/") and k.endswith(CURVE_METRICS)})
        for key in val_keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            right.plot(*zip(*points), marker="o", markersize=3,
                       label=f"{name}: {key.removeprefix('val/')}")
    left.set(title="training loss", xlabel="step", ylabel="loss", yscale="log")
    right.set(title="held-out metrics", xlabel="step", ylim=(0, 1))
    left.legend(fontsize=8)
    if right.lines:
        right.legend(fontsize=7, loc="lower right")
    else:
        right.text(0.5, 0.5, "no held-out evaluation during training", ha="center",
                   transform=right.transAxes)
    return to_png(figure)


def confusion(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts; rows are true classes."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size * 0.85))
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    if len(class_names) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axes.text(j, i, str(count), ha="center", va="center", fontsize=6,
                          color="white" if rates[i, j] > 0.5 else "black")
    axes.set(title=title, xlabel="predicted", ylabel="true")
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of true class")
    return to_png(figure)


def text_to_image_grid(queries: list[dict[str, Any]], images: dict[int, Image.Image]) -> bytes:
    """One row per caption query: its top-5 images, the correct one framed in green."""
    figure, axes = plt.subplots(len(queries), 6, figsize=(10, 1.7 * len(queries)),
                                gridspec_kw={"width_ratios": [2.2, 1, 1, 1, 1, 1]},
                                layout="constrained")
    for row, query in zip(np.atleast_2d(axes), queries):
        row[0].text(0, 0.5, _wrap(query["caption"], 32), va="center", fontsize=8)
        row[0].axis("off")
        for axis, index in zip(row[1:], query["top5"]):
            axis.imshow(images[index])
            axis.set_xticks([])
            axis.set_yticks([])
            correct = index == query["answer"]
            for spine in axis.spines.values():
                spine.set(color="tab:green" if correct else "lightgray",
                          linewidth=3 if correct else 1)
    figure.suptitle("caption -> top-5 images (green: the captioned image)", fontsize=10)
    return to_png(figure)


def image_to_text_grid(queries: list[dict[str, Any]], images: dict[int, Image.Image]) -> bytes:
    """One row per image query: the image and its top-5 captions, correct ones in green."""
    figure, axes = plt.subplots(len(queries), 2, figsize=(10, 1.5 * len(queries)),
                                gridspec_kw={"width_ratios": [1, 6]}, layout="constrained")
    for row, query in zip(np.atleast_2d(axes), queries):
        row[0].imshow(images[query["image"]])
        row[0].axis("off")
        row[1].axis("off")
        for rank, caption in enumerate(query["top5"]):
            good = caption in query["answers"]
            row[1].text(0, 0.9 - rank * 0.2, f"{rank + 1}. {_wrap(caption, 110)}", fontsize=8,
                        color="tab:green" if good else "black", va="center",
                        fontweight="bold" if good else "normal")
    figure.suptitle("image -> top-5 captions (green: one of its own captions)", fontsize=10)
    return to_png(figure)


def segmentation_overlays(items: list[tuple[Image.Image, np.ndarray, np.ndarray]],
                          class_names: list[str], title: str) -> bytes:
    """Per item: the image, the true mask and the predicted mask over it, with a legend.
    Predictions are drawn where they are scored (pixels with a true class)."""
    figure, axes = plt.subplots(len(items), 3, figsize=(9, 3 * len(items)), layout="constrained")
    palette = plt.get_cmap("tab20", max(20, len(class_names)))
    shown: set[int] = set()
    for row, (image, truth, predicted) in zip(np.atleast_2d(axes), items):
        row[0].imshow(image)
        row[0].set_title("image", fontsize=9)
        scored = np.where(truth < len(class_names), predicted, truth)
        for axis, mask, name in ((row[1], truth, "true"), (row[2], scored, "predicted")):
            axis.imshow(image)
            axis.imshow(_colour(mask, palette), alpha=0.6)
            axis.set_title(name, fontsize=9)
            shown |= {int(c) for c in np.unique(mask) if c < len(class_names)}
        for axis in row:
            axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette(c)) for c in sorted(shown)]
    figure.legend(handles, [class_names[c] for c in sorted(shown)], loc="outside lower center",
                  ncol=3, fontsize=7)
    figure.suptitle(title, fontsize=10)
    return to_png(figure)


def _colour(mask: np.ndarray, palette: Any) -> np.ndarray:
    """RGBA image of a class mask; ignored pixels transparent."""
    rgba = np.zeros((*mask.shape, 4))
    valid = mask < palette.N
    rgba[valid] = palette(mask[valid])
    rgba[~valid] = IGNORE_COLOUR
    return rgba


def bar_chart(rows: list[tuple[str, dict[str, float]]], title: str) -> bytes:
    """Grouped bars: one group per metric row, one bar per model (no bar where a model has no
    value: the controls skip some tasks)."""
    models = list(dict.fromkeys(m for _, values in rows for m in values))
    figure, axes = plt.subplots(figsize=(max(7, 0.6 * len(rows) * len(models) / 2 + 3), 4))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        values = [np.nan if values.get(model) is None else values[model] for _, values in rows]
        axes.bar(np.arange(len(rows)) + k * width, values, width, label=model)
    axes.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [label for label, _ in rows],
                    rotation=45, ha="right", fontsize=7)
    axes.set(title=title, ylim=(0, 1))
    axes.legend(fontsize=8)
    return to_png(figure)


def short_spec(spec: str) -> str:
    """``bundled:mobilenetv2@stage3`` -> ``mobilenetv2@stage3``; options abbreviated."""
    name = spec.split(":", 1)[-1]
    return name.replace("?weights=random", " (random)").replace("?", " ")


def alignment_scatter(panels: list[tuple[str, np.ndarray, dict[str, float]]],
                      alignment: np.ndarray, labels: list[str], title: str) -> bytes:
    """One panel per (x name, x values, correlation stats): alignment against x, each point an
    encoder (numbered; the key names them), Pearson and Spearman with 95% intervals on top."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2.5, 4.6),
                                layout="constrained", squeeze=False)
    for axis, (name, x, corr) in zip(axes[0], panels):
        axis.scatter(x, alignment, s=28, color="tab:blue", zorder=3)
        for number, (xi, yi) in enumerate(zip(x, alignment), start=1):
            axis.annotate(str(number), (xi, yi), fontsize=7, xytext=(3, 3),
                          textcoords="offset points", color="dimgray")
        if np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, alignment, 1)
            line = np.linspace(x.min(), x.max(), 2)
            axis.plot(line, slope * line + intercept, color="tab:red", linewidth=1, alpha=0.7)
        axis.set_title(f"{name}\nPearson {corr['pearson']:.2f} [{corr['pearson_low']:.2f}, "
                       f"{corr['pearson_high']:.2f}], Spearman {corr['spearman']:.2f} "
                       f"[{corr['spearman_low']:.2f}, {corr['spearman_high']:.2f}]", fontsize=9)
        axis.set(xlabel=name, ylabel="alignment (mean R@10)")
        axis.grid(alpha=0.3)
    key = [plt.Line2D([], [], linestyle="none") for _ in labels]
    axes[0, -1].legend(key, [f"{n}  {label}" for n, label in enumerate(labels, start=1)],
                       loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7,
                       handlelength=0, handletextpad=0, frameon=False)
    figure.suptitle(title, fontsize=10)
    return to_png(figure)


def heat_map(values: np.ndarray, rows: list[str], columns: list[str], title: str) -> bytes:
    """A rows x columns grid of values in [0, 1], each cell annotated."""
    figure, axes = plt.subplots(figsize=(2.2 + 1.3 * len(columns), 1.2 + 0.34 * len(rows)),
                                layout="constrained")
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=max(float(np.nanmax(values)), 1e-6),
                        aspect="auto")
    axes.set_xticks(np.arange(len(columns)), columns, fontsize=8)
    axes.set_yticks(np.arange(len(rows)), rows, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        axes.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                  color="white" if value < 0.6 * np.nanmax(values) else "black")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="alignment (mean R@10)")
    return to_png(figure)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:4])
