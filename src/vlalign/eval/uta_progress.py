"""Held-out numbers during UTA training: zero-shot accuracy of the student with the teacher's
text side, through the evaluation suite's own task (same prompts, same metric)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.eval.tasks import Context, zeroshot_classification
from vlalign.models.uta import UTAModel
from vlalign.uta.student import UTAStudent
from vlalign.uta.teachers import Teacher

Evaluator = Callable[[UTAStudent, Teacher, int], dict[str, float]]


def zeroshot_evaluator(specs: list[str], teacher_spec: str, data_root: str | Path = "data",
                       batch_size: int = 64) -> Evaluator:
    """``evaluate(student, teacher, step)`` -> ``{"<spec>/acc1": ...}`` for each labelled data
    spec (any spec `vlalign eval` reads, e.g. fashion-mnist:test or imagenet:DIR), on the
    ``UTAModel`` of the student being trained and its teacher (named ``teacher_spec``)."""
    sources = {spec: create_benchmark(spec, data_root) for spec in specs}  # bad specs fail now
    context = Context(batch_size=batch_size, progress=False)

    def evaluate(student: UTAStudent, teacher: Teacher, step: int) -> dict[str, float]:
        model = UTAModel(student, teacher, teacher_spec)
        return {f"{spec}/acc1": zeroshot_classification(model, source, None,
                                                        context).metrics["acc1"]
                for spec, source in sources.items()}

    return evaluate
