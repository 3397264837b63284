"""kill -9 during UTA training at seeded random points (steps, checkpoint writes, the final
export): resume finishes with a student bitwise equal to an uninterrupted run's."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

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
    expected = load_file(clean / "student.safetensors")
    clean_steps = [json.loads(line)["step"]
                   for line in (clean / "metrics.jsonl").read_text().splitlines()]
    rng = random.Random(SEED)
    for point in sorted(rng.sample(range(1, len(events) + 1), POINTS)):
        run, where = tmp_path / f"killed-{point}", events[point - 1]
        args = {"teacher": str(teacher), "run": str(run)}
        code = harness.run("uta", args, kill_at=point, cut=rng.random())
        assert code == -signal.SIGKILL, f"the kill at event {point} ({where}) must land"
        assert harness.run("uta", args | {"resume": True}) == 0, where
        student = load_file(run / "student.safetensors")
        assert student.keys() == expected.keys()
        for key in expected:
            assert student[key].equal(expected[key]), f"{key} differs after a kill at {where}"
        steps = [json.loads(line)["step"]
                 for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == clean_steps, where
