"""Held-out numbers during UTA training: zero-shot accuracy of the student with the teacher's
text side, through the evaluation suite's own task (same prompts, same metric)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.eval.tasks import Context, zeroshot_classification
from vlalign.uta.model import UTAModel

Evaluator = Callable[[UTAModel, int], dict[str, float]]


def zeroshot_evaluator(specs: list[str], data_root: str | Path = "data",
                       batch_size: int = 64) -> Evaluator:
    """``evaluate(model, step)`` -> ``{"<spec>/acc1": ...}`` for each labelled data spec (any
    spec `vlalign eval` reads, e.g. fashion-mnist:test or imagenet:DIR)."""
    sources = {spec: create_benchmark(spec, data_root) for spec in specs}  # bad specs fail now
    context = Context(batch_size=batch_size, progress=False)

    def evaluate(model: UTAModel, step: int) -> dict[str, float]:
        return {f"{spec}/acc1": zeroshot_classification(model, source, None,
                                                        context).metrics["acc1"]
                for spec, source in sources.items()}

    return evaluate
