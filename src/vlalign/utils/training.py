"""Pieces every training loop here shares (SAIL, UTA, fine-tuning): the device, the NaN guard,
and trimming metric lines past the checkpoint a run resumes from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlalign.errors import UserError
from vlalign.utils.files import atomic_write_bytes


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the message names the step and the term."""


def check_finite(step: int, terms: dict[str, torch.Tensor], last_good: int | None) -> None:
    """TrainingDiverged naming the first non-finite value (identical on every rank)."""
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            where = f"step {last_good}" if last_good is not None else "none yet"
            raise TrainingDiverged(f"non-finite {name} = {value.item()} at step {step}; "
                                   f"stopped (last good checkpoint: {where})")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (no duplicates), and a line
    torn by a kill mid-write."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("step", -1) <= last_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def refuse_overwrite(run_dir: Path, resume: bool) -> None:
    """UserError when ``run_dir`` already holds a run and the caller did not ask to resume it."""
    if (run_dir / "latest.json").exists() and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it "
                        "or choose another --out")


UNBOUNDED_STEPS = 1 << 40  # "until the time budget is spent": more steps than any run takes


def step_limit(epoch_steps: int, time_budget_s: float, max_steps: int | None = None) -> int:
    """The step a run stops at: ``epoch_steps`` (its epochs' worth), or, under a time budget,
    as many as the budget allows (the budget replaces epochs, so a fast run is not cut short
    before its schedule ends); ``max_steps`` caps either."""
    limit = UNBOUNDED_STEPS if time_budget_s > 0 else max(1, epoch_steps)
    return limit if max_steps is None else min(limit, max_steps)
