"""Experiment trackers: TensorBoard event files read back by TensorBoard itself, the W&B calls
through a fake ``wandb`` module (the real one needs an account), and the one-line errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlalign.errors import UserError
from vlalign.train.trackers import WANDB_ID, create_trackers


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard shows for ``run_dir``: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    (tracker,) = create_trackers(["tensorboard"], tmp_path, {}, resume=False)
    tracker.log({"step": 10, "loss": 0.75, "lr": 1e-4, "val/acc1": 0.5, "note": "skipped",
                 "flag": True}, step=10)
    tracker.log({"step": 20, "loss": 0.25, "lr": 5e-5}, step=20)
    tracker.close()
    scalars = _scalars(tmp_path)
    assert set(scalars) == {"step", "loss", "lr", "val/acc1"}
    assert scalars["loss"] == [(10, 0.75), (20, 0.25)]
    assert scalars["lr"] == [(10, pytest.approx(1e-4)), (20, pytest.approx(5e-5))]
    assert scalars["val/acc1"] == [(10, 0.5)]


def test_tensorboard_resume_replaces_the_steps_logged_after_the_checkpoint(
        tmp_path: Path) -> None:
    (first,) = create_trackers(["tensorboard"], tmp_path, {}, resume=False)
    for step in (10, 20, 30):  # killed after 30, last checkpoint at 10
        first.log({"loss": float(step)}, step=step)
    first.close()
    (resumed,) = create_trackers(["tensorboard"], tmp_path, {}, resume=True)
    for step in (20, 30, 40):
        resumed.log({"loss": step + 0.5}, step=step)
    resumed.close()
    assert _scalars(tmp_path)["loss"] == [(10, 10.0), (20, 20.5), (30, 30.5), (40, 40.5)]


def test_tensorboard_without_logs_writes_nothing(tmp_path: Path) -> None:
    (tracker,) = create_trackers(["tensorboard"], tmp_path, {}, resume=False)
    tracker.close()
    assert not (tmp_path / "tensorboard").exists()


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """A ``wandb`` module that records its calls in the returned list."""
    calls: list[tuple[str, Any]] = []
    module = types.ModuleType("wandb")
    module.init = lambda **kw: calls.append(("init", kw))
    module.log = lambda metrics, step: calls.append(("log", (metrics, step)))
    module.finish = lambda: calls.append(("finish", None))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_logs_numbers_and_finishes(tmp_path: Path, fake_wandb: list,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    run = tmp_path / "run-a"
    (tracker,) = create_trackers(["wandb"], run, {"lr": 1e-4}, resume=False)
    tracker.log({"loss": 0.5, "lr": 1e-4, "note": "skipped", "flag": False}, step=10)
    tracker.close()
    run_id = (run / WANDB_ID).read_text().strip()
    assert fake_wandb == [
        ("init", {"project": "mine", "name": "run-a", "dir": str(run), "config": {"lr": 1e-4},
                  "resume": None, "id": run_id}),
        ("log", ({"loss": 0.5, "lr": 1e-4}, 10)),
        ("finish", None)]


def test_wandb_resume_continues_the_same_run(tmp_path: Path, fake_wandb: list,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    create_trackers(["wandb"], tmp_path, {}, resume=False)[0].close()
    create_trackers(["wandb"], tmp_path, {}, resume=True)[0].close()
    create_trackers(["wandb"], tmp_path, {}, resume=False)[0].close()  # a fresh run
    inits = [kw for name, kw in fake_wandb if name == "init"]
    assert [kw["resume"] for kw in inits] == [None, "allow", None]
    assert {kw["project"] for kw in inits} == {"vlalign"}
    assert inits[0]["id"] == inits[1]["id"] != inits[2]["id"]
    assert (tmp_path / WANDB_ID).read_text().strip() == inits[2]["id"]


def test_both_trackers_each_once(tmp_path: Path, fake_wandb: list) -> None:
    trackers = create_trackers(["wandb", "tensorboard", "wandb"], tmp_path, {}, resume=False)
    assert [type(t).__name__ for t in trackers] == ["WandbTracker", "TensorBoardTracker"]
    for tracker in trackers:
        tracker.log({"loss": 1.0}, step=1)
        tracker.close()
    assert _scalars(tmp_path) == {"loss": [(1, 1.0)]}
    assert [name for name, _ in fake_wandb] == ["init", "log", "finish"]


def test_unknown_tracker_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^unknown tracker 'mlflow' in --report-to; "
                                        r"valid: tensorboard, wandb$"):
        create_trackers(["tensorboard", "mlflow"], tmp_path, {}, resume=False)


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # what `import name` sees when not installed
    with pytest.raises(UserError) as caught:
        create_trackers([name], tmp_path, {}, resume=False)
    assert str(caught.value) == (f"--report-to {name} needs the {name} package: "
                                 "pip install 'vlalign[tracking]'")


def test_missing_package_starts_no_wandb_run(tmp_path: Path, fake_wandb: list,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(UserError, match="needs the tensorboard package"):
        create_trackers(["wandb", "tensorboard"], tmp_path, {}, resume=False)
    assert fake_wandb == []
    assert not (tmp_path / WANDB_ID).exists()
