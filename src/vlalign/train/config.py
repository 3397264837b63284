"""The settings every task the engine trains shares: optimiser, schedule, precision, cadence.

``SailConfig``, ``UtaConfig`` and ``FinetuneConfig`` extend ``TrainSettings`` with their own
fields, so a recipe stays one flat YAML mapping and the engine reads one set of names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.config import setting
from vlalign.train.optim import OPTIMIZERS
from vlalign.train.precision import PRECISIONS
from vlalign.train.trackers import TRACKERS


@dataclass
class OptimConfig:
    name: str = setting("lion", choices=OPTIMIZERS)
    lr: float = setting(1e-5, above=0.0)
    weight_decay: float = setting(1e-4, minimum=0.0)
    beta1: float = setting(0.9, minimum=0.0)
    beta2: float = setting(0.99, minimum=0.0)
    eps: float = setting(1e-8, above=0.0)  # AdamW only
    warmup_fraction: float = setting(0.1, minimum=0.0)
    min_lr_fraction: float = setting(0.0, minimum=0.0)
    grad_clip: float = setting(1.0, minimum=0.0)  # max gradient norm; 0 = no clipping


@dataclass
class TrainSettings:
    """How the engine runs a task (see ``vlalign.train.loop``)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = setting(32768, minimum=1)  # the global batch, over every process
    epochs: float = setting(100.0, above=0.0)
    time_budget_s: float = setting(0.0, minimum=0.0)  # > 0: train this long instead of epochs
    precision: str = setting("auto", choices=PRECISIONS)  # fp16 always with loss scaling
    seed: int = 0
    log_every: int = setting(10, minimum=1)  # steps
    eval_every: int = setting(0, minimum=0)  # steps; 0 = only at the end
    checkpoint_every: int = setting(100, minimum=1)  # steps
    learning_guard_steps: int = setting(3, minimum=0)  # all-zero gradients this long stop; 0 off
    compile: bool = False  # torch.compile the trained module
    report_to: list[str] = setting([], choices=TRACKERS)  # tensorboard | wandb
    num_threads: int = setting(0, minimum=0)  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda
