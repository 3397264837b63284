"""Experiment trackers a training run reports its logged metrics to (``--report-to``).

``tensorboard`` writes event files under ``RUN/tensorboard``; ``wandb`` logs to one W&B run per
run directory, whose id is kept in ``RUN/wandb_id.txt`` so a resumed run continues it. Both
packages are optional (``pip install 'vlalign[tracking]'``) and imported only when asked for.
Create trackers on rank 0 only: every other rank would log the same values again.
"""

from __future__ import annotations

import importlib
import numbers
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from vlalign.errors import UserError
from vlalign.utils.files import atomic_write_bytes

TRACKERS = ("tensorboard", "wandb")
WANDB_ID = "wandb_id.txt"


class Tracker(Protocol):
    """Where a run's metrics go besides metrics.jsonl."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _require(name: str, module: str) -> ModuleType:
    """Import ``module`` for tracker ``name``; a missing package is one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--report-to {name} needs the {name} package: "
                        "pip install 'vlalign[tracking]'") from None


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The values a tracker can plot: real numbers (strings, bools, lists are skipped)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)}


class TensorBoardTracker:
    """One scalar per metric key under ``run_dir/tensorboard`` (``tensorboard --logdir RUN``)."""

    def __init__(self, run_dir: Path, resume: bool):
        _require("tensorboard", "tensorboard")  # torch.utils.tensorboard may be cached without it
        self._summary_writer = _require("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self._log_dir, self._resume = str(run_dir / "tensorboard"), resume
        self._writer: Any = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Write the numeric metrics at ``step`` and flush, so TensorBoard shows them at once."""
        if self._writer is None:  # opened at the first step, so a resumed run knows where it is
            # purge_step hides what the interrupted run logged from this step on (TensorBoard
            # would otherwise draw the steps since the last checkpoint twice).
            self._writer = self._summary_writer(self._log_dir,
                                                purge_step=step if self._resume else None)
        for key, value in _numeric(metrics).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WandbTracker:
    """One W&B run per run directory; a resumed run continues the same W&B run."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool):
        self._wandb = _require("wandb", "wandb")
        id_file = run_dir / WANDB_ID
        if resume and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:16]
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(id_file, f"{run_id}\n".encode())
        self._wandb.init(project=os.environ.get("WANDB_PROJECT", "vlalign"), name=run_dir.name,
                         dir=str(run_dir), config=config, resume="allow" if resume else None,
                         id=run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._wandb.log(_numeric(metrics), step=step)

    def close(self) -> None:
        self._wandb.finish()


def check_trackers(names: Sequence[str]) -> list[str]:
    """The distinct tracker names, in order; UserError on an unknown name or a missing package.
    Trainers call it before building anything slow, so a missing package fails in a second."""
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise UserError(f"unknown tracker {unknown[0]!r} in --report-to; valid: "
                        f"{', '.join(TRACKERS)}")
    wanted = list(dict.fromkeys(names))
    for name in wanted:  # every package first: no W&B run is started for a run that cannot go
        _require(name, name)
    return wanted


def create_trackers(names: Sequence[str], run_dir: Path, config: dict[str, Any],
                    resume: bool) -> list[Tracker]:
    """The trackers ``names`` asks for (each once, in order); UserError on an unknown name or
    a missing package, before anything is started."""
    wanted = check_trackers(names)
    return [TensorBoardTracker(run_dir, resume) if name == "tensorboard"
            else WandbTracker(run_dir, config, resume) for name in wanted]
