"""Guards that stop a run that cannot succeed, with one line saying why: a loss or gradient that
is not finite, and a run in which no gradient reaches the model (it would train nothing)."""

from __future__ import annotations

import torch
from torch import nn

from vlalign.errors import UserError

FP16_SKIP_LIMIT = 25  # consecutive steps fp16's scaler may skip before the run is diverged


class TrainingDiverged(UserError):
    """The loss or the gradients became NaN/inf; the message names the step and the value."""


class TrainingStalled(UserError):
    """No gradient reached the model for several steps: the run would train nothing."""


class FiniteWatch:
    """The first step whose loss or gradient norm was not finite, recorded on the device.

    ``record`` costs no host sync, so a GPU step never waits for the host; ``check`` (one sync)
    raises ``TrainingDiverged`` naming that step and value. The engine checks on every logging,
    evaluation and checkpoint step, so a non-finite step stops the run before any checkpoint or
    export can hold it.
    """

    NAMES = ("loss", "gradient norm")

    def __init__(self, device: torch.device) -> None:
        self.first = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=device)

    def record(self, step: int, name: str, value: torch.Tensor) -> None:
        """Remember (step, name, value) if ``value`` is the first non-finite one seen."""
        value = value.detach().to(torch.float64)
        bad = (self.first[0] < 0) & ~torch.isfinite(value)
        found = torch.stack([torch.full_like(value, step),
                             torch.full_like(value, self.NAMES.index(name)), value])
        self.first = torch.where(bad, found, self.first)

    def check(self, last_good: int | None) -> None:
        """TrainingDiverged for the first non-finite value recorded (identical on every rank)."""
        if self.first[0].item() >= 0:  # the one host sync
            step, which, value = self.first.tolist()
            where = f"step {last_good}" if last_good is not None else "none yet"
            raise TrainingDiverged(f"non-finite {self.NAMES[int(which)]} = {value} at step "
                                   f"{int(step)}; stopped (last good checkpoint: {where})")


def _likely_cause(precision: str) -> str:
    if precision == "fp16":
        return ("fp16 gradients underflow to zero even with loss scaling; use precision bf16 "
                "or fp32")
    return "the loss does not depend on the trained parameters (detached, frozen or constant)"


class LearningGuard:
    """Stops the run when every watched parameter's gradient is exactly zero (or absent) for
    ``patience`` consecutive optimiser steps: the silent failure of an unscaled fp16 run, whose
    scale and bias still move and whose gradients are all finite. ``patience`` 0 disables it."""

    def __init__(self, params: list[nn.Parameter], patience: int, precision: str) -> None:
        self.params, self.patience, self.precision = params, patience, precision
        self.zero_steps = 0

    def observe(self, step: int) -> None:
        """Call after backward (gradients unscaled) on a step that is applied."""
        if not self.patience:
            return
        learning = any(bool(p.grad.any()) for p in self.params if p.grad is not None)
        self.zero_steps = 0 if learning else self.zero_steps + 1
        if self.zero_steps >= self.patience:
            raise TrainingStalled(
                f"every trained parameter had an exactly-zero gradient for {self.zero_steps} "
                f"steps (up to step {step + 1}) under precision {self.precision}: "
                f"{_likely_cause(self.precision)}; stopped")


class SkipCounter:
    """Counts consecutive optimiser steps fp16's scaler skipped (non-finite gradients)."""

    def __init__(self) -> None:
        self.skipped_in_a_row, self.total = 0, 0

    def record(self, applied: bool, step: int, last_good: int | None) -> None:
        """TrainingDiverged after ``FP16_SKIP_LIMIT`` skipped steps in a row."""
        self.skipped_in_a_row = 0 if applied else self.skipped_in_a_row + 1
        self.total += not applied
        if self.skipped_in_a_row >= FP16_SKIP_LIMIT:
            where = f"step {last_good}" if last_good is not None else "none yet"
            raise TrainingDiverged(f"non-finite gradients on {FP16_SKIP_LIMIT} fp16 steps in a "
                                   f"row up to step {step}; stopped (last good checkpoint: "
                                   f"{where})")
