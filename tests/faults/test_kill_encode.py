"""kill -9 at seeded random points of an encode: the rerun finishes and equals an uninterrupted
run byte for byte, and nothing half-written is left behind."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

import harness

DATA = "digits:train[:100]"  # 4 shards of 32, the last one short
POINTS, SEED = 10, 7


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An uninterrupted encode and the events (writes, batches) it went through."""
    root = tmp_path_factory.mktemp("encode")
    log = root / "events.json"
    assert harness.run("encode", {"out": str(root / "clean"), "data": DATA}, log=log) == 0
    return root / "clean", json.loads(log.read_text())


def test_kill_9_at_random_points_then_rerun_equals_uninterrupted(reference, tmp_path: Path):
    clean, events = reference
    rng = random.Random(SEED)
    for point in sorted(rng.sample(range(1, len(events) + 1), POINTS)):
        out, where = tmp_path / f"killed-{point}", events[point - 1]
        code = harness.run("encode", {"out": str(out), "data": DATA}, kill_at=point,
                           cut=rng.random())
        assert code == -signal.SIGKILL, f"the kill at event {point} ({where}) must land"
        assert harness.run("encode", {"out": str(out), "data": DATA}) == 0, where
        harness.same_store(out, clean)
        assert not list(out.rglob("*.tmp")), where
