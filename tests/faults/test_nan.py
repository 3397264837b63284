"""A loss or gradient that becomes NaN stops the run with a clear message; the last good
checkpoint stays the newest one, holds finite weights, and nothing is exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness
from vlalign.sail import train as train_module
from vlalign.sail.train import train_sail
from vlalign.train.guards import TrainingDiverged
from vlalign.train.task import StepOutput
from vlalign.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class _NaNGradient(torch.autograd.Function):
    """Adds zero to the loss; its backward sends NaN into ``x`` (a finite loss, NaN gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.sum() * 0

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full(ctx.shape, float("nan"))


def _poison(monkeypatch: pytest.MonkeyPatch, call: int, where: str) -> None:
    """From forward call ``call`` on, make the loss (or the gradient) NaN."""
    forward, calls = train_module.SailModule.forward, {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, terms = forward(self, batch)
        if calls["n"] < call:
            return StepOutput(loss, terms)
        if where == "loss":
            return StepOutput(loss * float("nan"), terms)
        return StepOutput(loss + _NaNGradient.apply(self.loss.bias), terms)

    monkeypatch.setattr(train_module.SailModule, "forward", poisoned)


@pytest.mark.parametrize(("where", "message"), [
    ("loss", r"non-finite loss = nan at step 9; stopped \(last good checkpoint: step 8\)"),
    ("gradient", r"non-finite gradient norm = nan at step 9; stopped \(last good checkpoint: "
                 r"step 8\)"),
])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(train_store: Path, tmp_path: Path,
                                                              monkeypatch, where: str,
                                                              message: str) -> None:
    _poison(monkeypatch, call=10, where=where)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=message):
        train_sail(harness.train_config(train_store), run, progress=False)
    tensors, info = load_checkpoint(run)
    assert info["step"] == 8
    assert all(t.isfinite().all() for t in tensors.values() if t.is_floating_point())
    assert not (run / "heads.safetensors").exists()
