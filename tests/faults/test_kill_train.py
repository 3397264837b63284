"""kill -9 during SAIL training, at seeded random points and at every write of a checkpoint:
resume finishes with weights bitwise equal to an uninterrupted run's, and resume never picks up
a half-written checkpoint."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from safetensors.torch import load_file

import harness
from vlalign.utils.checkpoint import load_checkpoint

POINTS, SEED = 10, 11


def _kill_then_resume(store: Path, run: Path, point: int, cut: float, where: str) -> None:
    args = {"store": str(store), "run": str(run)}
    code = harness.run("train", args, kill_at=point, cut=cut)
    assert code == -signal.SIGKILL, f"the kill at event {point} ({where}) must land"
    assert harness.run("train", args | {"resume": True}) == 0, where


def _same_weights(run: Path, clean: Path, where: str) -> None:
    """Heads bitwise equal, and one metrics line per logged step (none repeated or lost)."""
    ours, theirs = load_file(run / "heads.safetensors"), load_file(clean / "heads.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].equal(theirs[key]), f"{key} differs after a kill at {where}"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"]
                     for line in (clean / "metrics.jsonl").read_text().splitlines()], where


def test_kill_9_at_random_points_then_resume_reaches_the_same_weights(train_store, clean_run,
                                                                      tmp_path: Path) -> None:
    clean, events = clean_run
    rng = random.Random(SEED)
    for point in sorted(rng.sample(range(1, len(events) + 1), POINTS)):
        run, where = tmp_path / f"killed-{point}", events[point - 1]
        _kill_then_resume(train_store, run, point, rng.random(), where)
        _same_weights(run, clean, where)


def test_kill_during_a_checkpoint_write_never_leaves_a_half_written_checkpoint(
        train_store, clean_run, tmp_path: Path) -> None:
    """Every event of the third checkpoint: tensors, record, latest.json, pruning the first."""
    clean, events = clean_run
    first = events.index("ckpt-00000012.safetensors-mid")
    last = events.index("step", first)
    assert last - first == 8  # 3 atomic writes x 2 events + 2 unlinks of checkpoint 4
    for index in range(first, last):
        run, where = tmp_path / f"killed-{index}", events[index]
        code = harness.run("train", {"store": str(train_store), "run": str(run)},
                           kill_at=index + 1, cut=0.5)
        assert code == -signal.SIGKILL, where
        _, info = load_checkpoint(run)  # what resume reads: checksum-verified, else StoreError
        assert info["step"] == (12 if index >= events.index("latest.json-done", first) else 8)
        assert harness.run("train", {"store": str(train_store), "run": str(run),
                                     "resume": True}) == 0, where
        _same_weights(run, clean, where)
