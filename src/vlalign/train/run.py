"""A run directory: what it holds, how it is started, resumed and checkpointed.

``config.json`` (the resolved recipe), ``metrics.jsonl`` (one line per logged step),
``ckpt-*.safetensors/json`` + ``latest.json`` (atomic checkpoints: model, optimiser, loss
scaler, RNG, step, training time, the task's identity), and what the task exports at the end.
Only rank 0 writes; a failed write (a full disk) stops every rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlalign.errors import UserError
from vlalign.train.precision import Precision
from vlalign.utils.checkpoint import (
    flatten_optimizer,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from vlalign.utils.distributed import on_rank_zero, world_info
from vlalign.utils.files import atomic_write_bytes, atomic_write_json

MODEL, RNG = "model.", "rng.torch"


@dataclass
class Resumed:
    """Where a resumed run continues: the next step and the training seconds already spent."""

    step: int = 0
    train_s: float = 0.0

    @property
    def last_good(self) -> int | None:
        return self.step or None


def refuse_overwrite(run_dir: Path, resume: bool) -> None:
    """UserError when ``run_dir`` already holds a run and the caller did not ask to resume it."""
    if (run_dir / "latest.json").exists() and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it "
                        "or choose another --out")


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines logged after the checkpoint a run resumes from (no duplicates), and a
    line torn by a kill mid-write."""
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


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


class RunDir:
    """One run's folder: refuses to overwrite, resumes, checkpoints (rank 0 writes)."""

    def __init__(self, path: Path, resume: bool) -> None:
        """Refuses at once (before any model loads) a folder that holds a run not resumed."""
        self.path, self.resume = Path(path), resume
        self.config: dict[str, Any] = {}
        self.identity: dict[str, Any] = {}
        refuse_overwrite(self.path, resume)

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                config: dict[str, Any], identity: dict[str, Any]) -> Resumed:
        """Load the newest checkpoint into ``module``, ``optimizer`` and the scaler (when
        resuming and there is one; it must have been made with the same ``identity``), then
        prepare the folder, writing ``config`` (the resolved recipe)."""
        self.config, self.identity = config, identity
        resumed = Resumed()
        checkpoint = load_checkpoint(self.path) if self.resume else None
        if checkpoint is not None:
            tensors, info = checkpoint
            saved = info.get("identity") or {}
            for key in sorted(set(saved) | set(identity)):
                if saved.get(key) != identity.get(key):
                    raise UserError(f"{self.path}: its checkpoint was made with {key} = "
                                    f"{saved.get(key)}, this run has {identity.get(key)}; "
                                    "use another --out")
            module.load_state_dict(with_prefix(tensors, MODEL))
            restore_optimizer(optimizer, tensors, info["optimizer"])
            precision.load_state(info.get("scaler", {}))
            torch.set_rng_state(tensors[RNG])
            resumed = Resumed(info["step"], info["train_s"])
        on_rank_zero(lambda: self._prepare(resumed.step))
        return resumed

    def _prepare(self, step: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("*.tmp"):  # left by a kill mid-write; never read
            stale.unlink()
        atomic_write_json(self.path / "config.json", self.config)
        trim_metrics(self.path / "metrics.jsonl", step)

    def save(self, step: int, train_s: float, module: nn.Module,
             optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        """Checkpoint ``step`` atomically (rank 0 writes; every rank waits for it)."""
        def write() -> None:
            opt_tensors, opt_info = flatten_optimizer(optimizer)
            tensors = {f"{MODEL}{k}": v for k, v in module.state_dict().items()}
            tensors |= opt_tensors | {RNG: torch.get_rng_state()}
            save_checkpoint(self.path, step, tensors, {
                "optimizer": opt_info, "scaler": precision.state(), "config": self.config,
                "identity": self.identity, "train_s": train_s})

        on_rank_zero(write)

    def last_metrics(self) -> dict[str, Any]:
        """The last line of ``metrics.jsonl`` (what a finished run resumed again returns)."""
        path = self.path / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return json.loads(lines[-1]) if lines else {}

    def metrics_sink(self):  # noqa: ANN201 - a text file object
        """``metrics.jsonl`` opened for appending on rank 0, a null sink elsewhere."""
        if world_info()[0] == 0:
            return open(self.path / "metrics.jsonl", "a")
        return open("/dev/null", "w")
