"""Run evaluation tasks, write CLIP_benchmark-shaped result files, and merge them into a table.

One run writes ``<task>__<dataset>.json`` = ``{"dataset", "model", "pretrained", "task",
"metrics", "language"}`` (CLIP_benchmark's shape), plus ``.details.json`` and ``.arrays.npz``
beside it for the report. A suite runs a list of (task, dataset, train dataset) on several models
and writes ``results.{json,csv,md}``: one row per (task, dataset, metric), one column per model.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.errors import UserError
from vlalign.eval.features import CLIPLike
from vlalign.eval.tasks import TASKS, Context
from vlalign.utils.files import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One evaluation: a task on a dataset spec (and a training-data spec where needed)."""

    task: str
    dataset: str
    train: str | None = None

    @property
    def slug(self) -> str:
        """A file-name-safe ``task__dataset`` name."""
        return f"{self.task}__{re.sub(r'[^A-Za-z0-9._-]+', '_', self.dataset).strip('_')}"


def offline_suite(fashion_train: str = "fashion-mnist:train[:20000]",
                  fashion_test: str = "fashion-mnist:test", emoji_train: str = "emoji:train",
                  emoji_test: str = "emoji:test", pairs_per_tag: int = 100,
                  canvases: int = 200) -> tuple[Job, ...]:
    """Every task on the offline data (the demo passes smaller slices)."""
    pairs = f"test?per_tag={pairs_per_tag}"
    return (
        Job("zeroshot_classification", fashion_test),
        Job("zeroshot_classification", emoji_test),
        Job("zeroshot_retrieval", emoji_test),
        Job("knn", fashion_test, fashion_train),
        Job("knn", emoji_test, emoji_train),
        Job("linear_probe", fashion_test, fashion_train),
        Job("linear_probe", emoji_test, emoji_train),
        Job("winoground", f"emoji-pairs:{pairs}"),
        Job("mmvp", f"emoji-mmvp:{pairs}"),
        Job("zeroshot_segmentation", f"emoji-canvas:test?by=name&count={canvases}"),
        Job("zeroshot_segmentation", f"emoji-canvas:test?by=subcategory&count={canvases}"),
    )


SUITES = {"offline": offline_suite()}


def run_job(model: CLIPLike, job: Job, model_name: str, pretrained: str, out: Path,
            ctx: Context, data_root: str | Path = "data") -> dict[str, Any]:
    """Evaluate one job; write its result to ``out`` (a .json file), details and arrays beside."""
    if job.task not in TASKS:
        raise UserError(f"unknown task {job.task!r}; valid: {', '.join(TASKS)}")
    dataset = create_benchmark(job.dataset, data_root)
    train = create_benchmark(job.train, data_root) if job.train else None
    start = time.perf_counter()
    result = TASKS[job.task](model, dataset, train, ctx)
    seconds = time.perf_counter() - start
    record = {"dataset": job.dataset, "model": model_name, "pretrained": pretrained,
              "task": job.task, "metrics": result.metrics, "language": "en"}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record)
    details = {**result.details, "train_dataset": job.train, "seconds": round(seconds, 2)}
    atomic_write_json(beside(out, "details.json"), details)
    if result.arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **result.arrays)
        atomic_write_bytes(beside(out, "arrays.npz"), buffer.getvalue())
    log.info("%s on %s: %s (%.1f s)", job.task, job.dataset,
             {k: round(v, 4) for k, v in result.metrics.items() if "/" not in k}, seconds)
    return record


def beside(result_file: Path, suffix: str) -> Path:
    """``x.json`` -> ``x.<suffix>``: where a result's details and arrays live."""
    return result_file.with_name(result_file.name.removesuffix(".json") + "." + suffix)


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a summary table shows: per-tag/per-class entries and counts left out."""
    return {k: v for k, v in metrics.items()
            if "/" not in k and k not in ("skipped", "train_size", "lp_weight_decay")}


def merge(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per (task, dataset, metric), one column per model."""
    models = list(dict.fromkeys(r["model"] for r in records))
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for record in records:
        for metric, value in headline(record["metrics"]).items():
            table.setdefault((record["task"], record["dataset"], metric), {})[
                record["model"]] = value
    rows = [[*key, *(values.get(m) for m in models)] for key, values in table.items()]
    return ["task", "dataset", "metric", *models], sorted(rows, key=_row_order(rows))


def _row_order(rows: list[list[Any]]) -> Callable[[list[Any]], tuple]:
    """Keep tasks and datasets in first-seen order; metrics in natural order (@5 before @10)."""
    first_seen = {tuple(row[:2]): i for i, row in reversed(list(enumerate(rows)))}

    def key(row: list[Any]) -> tuple:
        metric = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", row[2])]
        return first_seen[tuple(row[:2])], metric

    return key


def write_table(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write results.json, results.csv and results.md; returns the Markdown path."""
    header, rows = merge(records)
    atomic_write_json(out_dir / "results.json", records)
    text = io.StringIO()
    csv.writer(text).writerows([header, *rows])
    atomic_write_bytes(out_dir / "results.csv", text.getvalue().encode())
    atomic_write_bytes(out_dir / "results.md", markdown_table(header, rows).encode())
    return out_dir / "results.md"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats with 4 decimals, missing cells as an en dash."""
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_suite(models: dict[str, tuple[CLIPLike, str]], jobs: tuple[Job, ...], out_dir: Path,
              ctx: Context, data_root: str | Path = "data") -> list[dict[str, Any]]:
    """Every job on every model (``name -> (model, pretrained)``); writes the merged table."""
    records = []
    for name, (model, pretrained) in models.items():
        for job in jobs:
            out = out_dir / name / f"{job.slug}.json"
            records.append(run_job(model, job, name, pretrained, out, ctx, data_root))
    write_table(records, out_dir)
    return records


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every result record under ``out_dir`` (``*/*.json`` result files, details excluded)."""
    records = []
    for path in sorted(out_dir.glob("*/*.json")):
        if not path.name.endswith(".details.json"):
            records.append(json.loads(path.read_text()))
    return records
