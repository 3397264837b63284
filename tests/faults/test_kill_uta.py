"""kill -9 during UTA training at seeded random points (steps, checkpoint writes, the final
export): resume finishes with a student bitwise equal to an uninterrupted run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness
from tiny_models import save_sail_teacher

POINTS, SEED = 6, 5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sail_teacher(tmp_path_factory.mktemp("uta-teacher") / "sail")


def test_kill_9_during_uta_training_then_resume_reaches_the_same_student(
        teacher: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.json"
    clean = tmp_path / "clean"
    assert harness.run("uta", {"teacher": str(teacher), "run": str(clean)}, log=log) == 0
    events = json.loads(log.read_text())
    assert events.count("step") == 16  # 2 epochs of 64 digits at batch 8
    clean_steps = [json.loads(line)["step"]
                   for line in (clean / "metrics.jsonl").read_text().splitlines()]
    for run, where in harness.killed_and_resumed("uta", {"teacher": str(teacher)}, events,
                                                 POINTS, SEED, tmp_path):
        harness.same_tensors(run / "student.safetensors", clean / "student.safetensors", where)
        steps = [json.loads(line)["step"]
                 for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == clean_steps, where
