"""kill -9 during full fine-tuning at seeded random points (steps, checkpoint writes, the final
export): resume ends with a classifier and test accuracy bitwise equal to an uninterrupted run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness
from tiny_models import save_sail_teacher

POINTS, SEED = 4, 11


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UTA student (two epochs of 64 digits) to fine-tune."""
    root = tmp_path_factory.mktemp("finetune-student")
    teacher = save_sail_teacher(root / "sail")
    assert harness.run("uta", {"teacher": str(teacher), "run": str(root / "uta")}) == 0
    return root / "uta"


def _result(run: Path) -> tuple[dict, list[int]]:
    metrics = json.loads((run / "finetune.json").read_text())["metrics"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k: metrics[k] for k in ("acc1", "steps")}, steps


def test_kill_9_during_finetuning_then_resume_reaches_the_same_classifier(
        student: Path, tmp_path: Path) -> None:
    log, clean = tmp_path / "events.json", tmp_path / "clean"
    assert harness.run("finetune", {"model": str(student), "run": str(clean)}, log=log) == 0
    events = json.loads(log.read_text())
    assert events.count("step") == 16  # 2 epochs of 64 digits at batch 8
    expected = _result(clean)
    for run, where in harness.killed_and_resumed("finetune", {"model": str(student)}, events,
                                                 POINTS, SEED, tmp_path):
        harness.same_tensors(run / "classifier.safetensors", clean / "classifier.safetensors",
                             where)
        assert _result(run) == expected, where
