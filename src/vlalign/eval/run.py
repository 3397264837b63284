"""Run evaluation tasks, write CLIP_benchmark's result records, and merge them into a table.

One evaluation writes one record per (model, dataset, task), field by field CLIP_benchmark's
(``clip_benchmark eval`` writes the same; ``clip_benchmark build`` merges both)::

    {"dataset": "imagenet1k", "model": "sail", "pretrained": "runs/sail",
     "task": "zeroshot_classification", "metrics": {"acc1": ..., "acc5": ...,
     "mean_per_class_recall": ...}, "language": "en",
     "vlalign": {"name": "sail", "task": "zeroshot_classification", "spec": "imagenet:/data/in1k",
                 "train_spec": null, "skipped": 0}}

``dataset`` is CLIP_benchmark's name where it has the same data (``imagenet1k``,
``mscoco_captions``, ``flickr30k``, ``winoground``), else our dataset's name without split,
options or slice (``fashion-mnist``, ``emoji``, ``emoji-pairs``, ``emoji-canvas/subcategory``).
``model``/``pretrained`` are the model's name and spec, or for an ``open_clip:ARCH/TAG`` spec
ARCH and TAG, as CLIP_benchmark's open_clip loader records them. ``task`` and the metric names
are CLIP_benchmark's (Winoground is its ``image_caption_selection``: ``text_acc``,
``image_acc``, ``acc``); tasks it lacks keep ours (``knn``, ``mmvp``,
``zeroshot_segmentation``). ``vlalign`` holds what CLIP_benchmark has no field for: the
column name, our task name, the dataset specs, and counts (``skipped`` items, ``train_size``).

A suite writes ``OUT/<name>/<task>__<dataset spec>.json`` per (model, job), their details and
arrays for the report in ``OUT/<name>/details/`` (``clip_benchmark build`` reads a folder's
``*.json`` only, not its subfolders), and the summary ``OUT/results.{json,csv,md}``: the list
of records, and a table with one row per (task, dataset spec, metric), one column per model.
``clip_benchmark build OUT/*/`` (or ``vlalign clip-benchmark build OUT``) merges the records.
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

from vlalign.data.benchmarks.registry import BENCHMARKS, GRAMMAR, create_benchmark
from vlalign.data.registry import GRAMMAR as SOURCE_GRAMMAR
from vlalign.data.registry import PATH_SCHEMES
from vlalign.errors import UserError
from vlalign.eval.features import CLIPLike
from vlalign.eval.tasks import RECORD_TASKS, TASKS, Context
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


# CLIP_benchmark's dataset names for our schemes that read the same data (its Karpathy COCO
# and Flickr30k test splits, ImageNet-1k val, Winoground).
BENCHMARK_DATASETS = {"imagenet": "imagenet1k", "coco": "mscoco_captions",
                      "flickr30k": "flickr30k", "winoground": "winoground"}
COUNTS = ("skipped", "train_size")  # what a task reports beside its metrics
DETAILS = "details"  # the subfolder of a result file's details and arrays


def dataset_name(spec: str) -> str:
    """A record's ``dataset``: CLIP_benchmark's name (``BENCHMARK_DATASETS``), else the scheme
    (``fashion-mnist:test[:500]`` -> ``fashion-mnist``), the file or folder name of a path
    scheme (``csv:/data/pairs.csv`` -> ``pairs``, ``folder:/data/pets`` -> ``pets``; webdataset
    shards: their folder, above a split folder), or ``emoji-canvas/<by>`` (its grouping changes
    the classes, as CLIP_benchmark's ``vtab/dsprites_label_*`` tasks do)."""
    scheme = GRAMMAR.scheme(spec)  # a benchmark's options, or a source's path (``?`` and all)
    parsed = (GRAMMAR if scheme in BENCHMARKS else SOURCE_GRAMMAR).parse(spec)
    if parsed.scheme in BENCHMARK_DATASETS:
        return BENCHMARK_DATASETS[parsed.scheme]
    if parsed.scheme == "emoji-canvas":
        return f"emoji-canvas/{parsed.options.get('by', 'name')}"
    if parsed.scheme not in PATH_SCHEMES:
        return parsed.scheme
    path = Path(parsed.name.rstrip("/"))
    if parsed.scheme == "folder":
        return path.name or parsed.scheme
    if parsed.scheme in ("csv", "jsonl"):
        return path.stem or parsed.scheme
    folder = path.parent
    if folder.name in ("train", "test", "val", "validation"):
        folder = folder.parent
    return folder.name or re.sub(r"[-_.]*[{*?\[].*", "", path.stem) or parsed.scheme


def record_model(name: str, pretrained: str) -> tuple[str, str]:
    """A record's (``model``, ``pretrained``): ``open_clip:ARCH/TAG`` gives (ARCH, TAG), as
    CLIP_benchmark's open_clip loader records it; any other model (name, pretrained)."""
    if not pretrained.startswith("open_clip:"):
        return name, pretrained
    body, _, query = pretrained.removeprefix("open_clip:").partition("?")
    if body.startswith(("hf-hub:", "local-dir:")) or "/" not in body:
        return body, query
    arch, _, tag = body.partition("/")
    return arch, tag


def make_record(job: Job, model_name: str, pretrained: str,
                metrics: dict[str, float]) -> dict[str, Any]:
    """CLIP_benchmark's result record for one job, our own fields under ``vlalign``."""
    model, pretrained = record_model(model_name, pretrained)
    ours = {"name": model_name, "task": job.task, "spec": job.dataset, "train_spec": job.train}
    ours |= {key: metrics[key] for key in COUNTS if key in metrics}
    return {"dataset": dataset_name(job.dataset), "model": model, "pretrained": pretrained,
            "task": RECORD_TASKS.get(job.task, job.task),
            "metrics": {k: v for k, v in metrics.items() if k not in COUNTS},
            "language": "en", "vlalign": ours}


def run_job(model: CLIPLike, job: Job, model_name: str, pretrained: str, out: Path,
            ctx: Context, data_root: str | Path = "data") -> dict[str, Any]:
    """Evaluate one job; write its record to ``out`` (a .json file), details and arrays to
    ``details_file(out)``."""
    if job.task not in TASKS:
        raise UserError(f"unknown task {job.task!r}; valid: {', '.join(TASKS)}")
    dataset = create_benchmark(job.dataset, data_root)
    train = create_benchmark(job.train, data_root) if job.train else None
    start = time.perf_counter()
    result = TASKS[job.task](model, dataset, train, ctx)
    seconds = time.perf_counter() - start
    record = make_record(job, model_name, pretrained, result.metrics)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record)
    details = {**result.details, "train_dataset": job.train, "seconds": round(seconds, 2)}
    details_file(out).parent.mkdir(exist_ok=True)
    atomic_write_json(details_file(out), details)
    if result.arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **result.arrays)
        atomic_write_bytes(details_file(out, ".npz"), buffer.getvalue())
    log.info("%s on %s: %s (%.1f s)", job.task, job.dataset,
             {k: round(v, 4) for k, v in record["metrics"].items() if "/" not in k}, seconds)
    return record


def details_file(result_file: Path, suffix: str = ".json") -> Path:
    """``x.json`` -> ``details/x.json`` (details) or ``details/x.npz`` (arrays): beside the
    result, in a subfolder ``clip_benchmark build`` leaves alone."""
    return result_file.parent / DETAILS / (result_file.name.removesuffix(".json") + suffix)


def is_record(data: Any) -> bool:
    """Whether parsed JSON is one result record (not a results.json list, not details)."""
    return isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "task" in data


def column(record: dict[str, Any]) -> str:
    """The model's name in tables and folders (``model`` of records before ``vlalign``)."""
    return record.get("vlalign", {}).get("name", record["model"])


def dataset_spec(record: dict[str, Any]) -> str:
    """The dataset spec a record was evaluated on (its ``dataset`` for older records)."""
    return record.get("vlalign", {}).get("spec", record["dataset"])


def our_task(record: dict[str, Any]) -> str:
    """vlalign's task name (``winoground`` for CLIP_benchmark's image_caption_selection)."""
    return record.get("vlalign", {}).get("task", record["task"])


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a summary table shows: per-tag/per-class entries and counts left out."""
    return {k: v for k, v in metrics.items()
            if "/" not in k and k not in (*COUNTS, "weight_decay", "lp_weight_decay")}


def merge(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per (task, dataset spec, metric), one column per model name."""
    models = list(dict.fromkeys(map(column, records)))
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for record in records:
        for metric, value in headline(record["metrics"]).items():
            table.setdefault((our_task(record), dataset_spec(record), metric), {})[
                column(record)] = value
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


def result_files(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(path, record) of every result record directly in ``folder``, in name order."""
    found = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if is_record(data):
            found.append((path, data))
    return found


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every result record of a suite folder: ``OUT/<name>/*.json`` (not results.json, not the
    details)."""
    return [record for folder in sorted(p for p in out_dir.iterdir() if p.is_dir())
            for _, record in result_files(folder)]
