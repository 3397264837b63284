"""Assemble a run's report from what its folder holds.

Looks (in RUN and the folders below it, two levels deep) for: ``overview.json`` (a pipeline's
first screen: what was trained on what, headline numbers against the controls), ``summary.json``
(the demo's key numbers), training runs (``metrics.jsonl``), evaluation suites
(``results.json``) and alignment probes (``probe.json``). Each suite's first model gets the
detailed plots: confusion matrices, retrieval grids and segmentation overlays, redrawn from its
result details and the evaluation data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.errors import UserError
from vlalign.eval.run import column, dataset_spec, details_file, merge, result_files
from vlalign.report import plots
from vlalign.report.probe import probe_section
from vlalign.report.render import Figure, Section, write_report

THUMBNAIL = 96


def _find(run: Path, name: str) -> list[Path]:
    """Files called ``name`` in RUN and up to two folder levels below, in sorted order."""
    found = [run / name] + sorted(run.glob(f"*/{name}")) + sorted(run.glob(f"*/*/{name}"))
    return [p for p in found if p.is_file()]


def _overview_section(path: Path) -> Section:
    """A pipeline's first screen (``overview.json``: title, lines, tables), as written."""
    overview = json.loads(path.read_text())
    return Section(overview.get("title", "Overview"), list(overview.get("lines", [])),
                   [(t["header"], t["rows"]) for t in overview.get("tables", [])])


def _summary_section(path: Path) -> Section:
    summary = json.loads(path.read_text())
    rows = [[key, value] for key, value in summary.items()]
    return Section("Every key number", [f"All of {path.name}, the numbers a test or script reads."],
                   [(["metric", "value"], rows)])


def _training_section(run: Path, paths: list[Path]) -> Section:
    runs = {}
    for path in paths:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs[str(path.parent.relative_to(run)) if path.parent != run else run.name] = rows
    last = [[name, rows[-1]["step"] if rows else 0,
             next((r["loss"] for r in reversed(rows) if "loss" in r), None)]
            for name, rows in runs.items()]
    return Section("Training", ["Loss of every training run found, and the held-out metrics "
                                "evaluated during training."],
                   [(["run", "last step", "last loss"], last)],
                   [Figure("training_curves", plots.training_curves(runs),
                           "Training loss (log scale) and held-out metrics against step.")])


def _thumbnails(dataset: Any, indices: set[int]) -> dict[int, Image.Image]:
    images = {}
    for index in sorted(indices):
        image = dataset.load(index).image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        images[index] = image
    return images


def _model_figures(result_file: Path, record: dict[str, Any], data_root: Path) -> list[Figure]:
    """The detailed plots of one result file (empty for tasks without pictures)."""
    details_path = details_file(result_file)
    if not details_path.exists():
        return []
    details = json.loads(details_path.read_text())
    arrays_path = details_file(result_file, ".npz")
    arrays = dict(np.load(arrays_path)) if arrays_path.exists() else {}
    task, spec, model = record["task"], dataset_spec(record), column(record)
    stem = result_file.stem.replace(".", "_")
    what = f"{model} on {spec}"
    if task == "zeroshot_classification" and "confusion" in arrays:
        png = plots.confusion(arrays["confusion"], details["class_names"], f"zero-shot, {what}")
        return [Figure(f"{model}_{stem}", png, f"Zero-shot confusion matrix, {what} "
                       f"(acc1 {record['metrics']['acc1']:.3f}).")]
    if task == "zeroshot_retrieval" and details.get("text_to_image"):
        dataset = create_benchmark(spec, data_root)
        wanted = {i for q in details["text_to_image"] for i in q["top5"]}
        wanted |= {q["image"] for q in details["image_to_text"]}
        images = _thumbnails(dataset, wanted)
        return [Figure(f"{model}_{stem}_t2i", plots.text_to_image_grid(
                    details["text_to_image"], images), f"Text-to-image retrieval, {what}."),
                Figure(f"{model}_{stem}_i2t", plots.image_to_text_grid(
                    details["image_to_text"], images), f"Image-to-text retrieval, {what}.")]
    if task == "zeroshot_segmentation" and details.get("examples"):
        dataset = create_benchmark(spec, data_root)
        items = [(dataset.load(i).image, arrays[f"mask_{i}"], arrays[f"pred_{i}"])
                 for i in details["examples"][:4]]
        png = plots.segmentation_overlays(items, details["class_names"],
                                          f"open-vocabulary segmentation, {what}")
        return [Figure(f"{model}_{stem}", png, f"Segmentation overlays, {what} "
                       f"(mIoU {record['metrics']['miou']:.3f}).")]
    return []


def _where(path: Path, run: Path) -> Path:
    """The folder of ``path`` relative to RUN (``.`` for RUN itself)."""
    return path.parent.relative_to(run) if path.parent != run else Path(".")


def _results_section(path: Path, run: Path, data_root: Path) -> Section:
    records = json.loads(path.read_text())
    header, rows = merge(records)
    where = _where(path, run)
    section = Section(f"Evaluation: {where}",
                      ["One row per task, dataset and metric; one column per model. Controls "
                       "(random heads, linear heads) give each number a floor."],
                      [(header, rows)])
    models = header[3:]
    bars = [(f"{task}/{dataset.split(':')[0]}/{metric}", dict(zip(models, values)))
            for task, dataset, metric, *values in rows
            if metric in ("acc1", "image_retrieval_recall@5", "knn_acc@20", "lp_acc1",
                          "acc", "mmvp_average", "miou")]
    if bars:
        section.figures.append(Figure(f"{where.name or 'eval'}_overview",
                                      plots.bar_chart(bars, "headline metrics per model"),
                                      "Headline metric of every task, per model."))
    first = path.parent / column(records[0]) if records else None  # its folder of records
    if first is not None and first.is_dir():
        for result_file, record in result_files(first):
            section.figures += _model_figures(result_file, record, data_root)
    return section


def build_report(run: str | Path, data_root: str | Path = "data",
                 title: str | None = None) -> Path:
    """Write RUN/report.html (self-contained) and RUN/report.md; returns the HTML path."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    sections = [_overview_section(p) for p in _find(run, "overview.json")[:1]]
    sections += [_summary_section(p) for p in _find(run, "summary.json")[:1]]
    training = [p for p in _find(run, "metrics.jsonl")  # a probe's runs: in its own section
                if not (p.parent.parent.parent / "probe.json").exists()]
    if training:
        sections.append(_training_section(run, training))
    sections += [_results_section(p, run, Path(data_root)) for p in _find(run, "results.json")]
    sections += [probe_section(json.loads(p.read_text()), str(_where(p, run)))
                 for p in _find(run, "probe.json")]
    if not sections:
        raise UserError(f"{run}: nothing to report (no summary.json, metrics.jsonl, "
                        "results.json or probe.json; run `vlalign train`, `vlalign eval --suite` "
                        "or `vlalign probe` first)")
    return write_report(run, title or f"vlalign report: {run.name}", sections)

