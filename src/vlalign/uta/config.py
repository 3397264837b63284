"""The UTA training recipe as a dataclass; YAML files in configs/ override these defaults.

Loaded with ``vlalign.config.load_config`` (defaults <- YAML <- ``--set`` overrides) and checked
by ``check_config``, so a bad value fails in a second with one line, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.errors import UserError
from vlalign.sail.config import OptimConfig
from vlalign.uta.masking import STRATEGIES
from vlalign.uta.student import SIZES
from vlalign.utils.precision import PRECISIONS

OBJECTIVES = ("uta", "mim", "distill")  # kept tokens | EVA-02-style mask tokens | no masking
TARGETS = ("online", "store")


@dataclass
class StudentSpec:
    """A named student size; a 0 field takes the size's value (dim, depth, heads) or follows the
    teacher (img_size = the teacher's input size; patch_size = img_size / the teacher's grid
    side, so both grids match, else 16 and the teacher's tokens are resampled)."""

    size: str = "tiny"
    img_size: int = 0
    patch_size: int = 0
    dim: int = 0
    depth: int = 0
    heads: int = 0


@dataclass
class MaskConfig:
    ratio: float = 0.5  # fraction of patches dropped (UTA) or replaced by [MASK] (mim)
    strategy: str = "reversed_block"  # random | block | reversed_block


@dataclass
class EvalConfig:
    zeroshot: list[str] = field(default_factory=list)  # labelled data specs: zero-shot acc1
    every: int = 0  # steps; 0 = only at the end
    batch_size: int = 64


@dataclass
class UtaConfig:
    """Everything that defines a UTA run (teacher, student, objective, data, schedule)."""

    teacher: str = "sail:runs/demo/sail"  # sail:RUN | open_clip:ARCH/TAG | hf:CLIP_FOLDER
    student: StudentSpec = field(default_factory=StudentSpec)
    objective: str = "uta"  # uta | mim | distill (the two baselines)
    mask: MaskConfig = field(default_factory=MaskConfig)
    cls_weight: float = 1.0  # loss = tokens + cls_weight * CLS term
    data: list[str] = field(default_factory=lambda: ["fashion-mnist:train[:20000]",
                                                     "emoji:train"])
    data_root: str = "data"
    targets: str = "online"  # online: run the teacher per batch | store: read its token maps
    stores: list[str] = field(default_factory=list)  # one per data spec, encoded with --tokens
    augment: bool = False  # random resized crop + flip (online targets only)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=1e-3, weight_decay=0.05, beta1=0.9, beta2=0.98, warmup_fraction=0.1,
        min_lr_fraction=0.01, grad_clip=3.0))
    batch_size: int = 128
    epochs: float = 10.0
    time_budget_s: float = 0.0  # > 0: train this long instead of `epochs` (schedule in time)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (student autocast; see utils/precision)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100  # steps
    num_workers: int = 0  # image-decoding processes
    num_threads: int = 0  # torch CPU threads; 0 = leave torch's default
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda
    eval: EvalConfig = field(default_factory=EvalConfig)


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UserError(f"config {name}: {value!r} is not one of {', '.join(valid)}")


def check_config(config: UtaConfig) -> None:
    """UserError naming the first value that cannot work."""
    _one_of("objective", config.objective, OBJECTIVES)
    _one_of("targets", config.targets, TARGETS)
    _one_of("mask.strategy", config.mask.strategy, STRATEGIES)
    _one_of("student.size", config.student.size, tuple(SIZES))
    _one_of("precision", config.precision, PRECISIONS)
    _one_of("optim.name", config.optim.name, ("adamw", "lion"))
    if not 0.0 <= config.mask.ratio < 1.0:
        raise UserError(f"config mask.ratio: {config.mask.ratio} is not in [0, 1)")
    if not config.data:
        raise UserError("config data: no training data; list dataset specs, e.g. emoji:train")
    positive = {"batch_size": config.batch_size, "log_every": config.log_every,
                "checkpoint_every": config.checkpoint_every, "epochs": config.epochs,
                "eval.batch_size": config.eval.batch_size}
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"config {name}: must be positive, got {value}")
    if config.targets == "store":
        if len(config.stores) != len(config.data):
            raise UserError(f"config stores: targets=store needs one store per data spec "
                            f"({len(config.data)}), got {len(config.stores)}")
        if config.augment:
            raise UserError("config augment: stored targets are of the unaugmented images; "
                            "set augment=false or targets=online")
