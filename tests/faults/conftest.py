"""Fixtures for the fault tests: a tiny training store and an uninterrupted reference run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness


@pytest.fixture(scope="session")
def train_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 digits encoded with the tiny bundled encoders (7 shards)."""
    out = tmp_path_factory.mktemp("train-store") / "store"
    assert harness.run("encode", {"out": str(out), "data": "digits:train[:200]"}) == 0
    return out


@pytest.fixture(scope="session")
def clean_run(train_store: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, list[str]]:
    """An uninterrupted SAIL run (15 steps, checkpoints at 4, 8, 12, 15) and its events."""
    root = tmp_path_factory.mktemp("clean-run")
    log = root / "events.json"
    args = {"store": str(train_store), "run": str(root / "run")}
    assert harness.run("train", args, log=log) == 0
    return root / "run", json.loads(log.read_text())
