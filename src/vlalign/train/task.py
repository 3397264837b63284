"""What the engine trains: a task supplies the module, its batches, and what to save.

Contract (DESIGN 4: N processes compute what one process computes on the global batch):
``module(batch)`` returns a ``StepOutput`` whose loss and terms are this rank's **share** of
the global values — the shares summed over ranks give the single-process numbers (a mean over a
rank's b of B rows is divided by the number of ranks; SAIL's contrastive loss returns its share
already). The engine backpropagates ``world_size * share`` through DDP, whose gradient average
is then exactly the gradient of the global loss, and logs the all-reduced sums.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn


class StepOutput(NamedTuple):
    """This rank's share of the loss to backpropagate, and named terms to log (shares too)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = {}  # noqa: RUF012 - never mutated


class Task(abc.ABC):
    """One kind of training (SAIL heads, a UTA student, a classifier) for ``train.loop.fit``."""

    name: str  # progress-bar label, e.g. "train sail"
    unit: str = "samples"  # what the throughput metric counts: ``{unit}_per_s``
    module: nn.Module  # the trained module; ``module(batch) -> StepOutput``
    device: torch.device
    steps_per_epoch: int
    samples_per_step: int  # the global batch

    @abc.abstractmethod
    def batches(self, start: int, stop: int) -> Iterator[Any]:
        """This rank's batches of global steps ``start .. stop-1``, on ``device``."""

    @abc.abstractmethod
    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        """Write the finished model (rank 0 only); ``info`` holds step and training time."""

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been made by for this run to resume it."""
        return {}

    def watched_parameters(self) -> list[nn.Parameter]:
        """The parameters the learning guard watches (default: every trained one)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in ``module``) exempt from weight decay beyond the 1-D ones."""
        return set()

    def after_step(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Called after every applied optimiser step (e.g. to clamp a parameter)."""

    def batch_metrics(self, batch: Any) -> dict[str, float]:
        """Extra numbers to log for a logged step's batch (e.g. skipped items)."""
        return {}
