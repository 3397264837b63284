"""The UTA training recipe as a dataclass; YAML files in configs/ override these defaults.

Loaded with ``vlalign.config.load_config`` (defaults <- YAML <- ``--set`` overrides) and checked
by ``check_config``, so a bad value fails in a second with one line, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.config import setting, validate
from vlalign.errors import UserError
from vlalign.train.config import OptimConfig, TrainSettings
from vlalign.uta.masking import STRATEGIES
from vlalign.uta.student import student_names

OBJECTIVES = ("uta", "mim", "distill")  # kept tokens | EVA-02-style mask tokens | no masking
TARGETS = ("online", "store")


@dataclass
class StudentSpec:
    """A timm EVA-02 model by name; a 0 field takes the model's value (dim, depth, heads) or
    follows the teacher (img_size = the teacher's input size; patch_size = img_size / the
    teacher's grid side, so both grids match, else the model's own and the teacher's tokens are
    resampled)."""

    name: str = setting("eva02_tiny_patch14_224", choices=tuple(student_names()))
    img_size: int = 0
    patch_size: int = 0
    dim: int = 0
    depth: int = 0
    heads: int = 0
    drop_path: float = setting(0.0, minimum=0.0)  # stochastic depth rate at the last block
    grad_checkpointing: bool = False  # recompute blocks in the backward: less memory, ~30% slower


@dataclass
class MaskConfig:
    ratio: float = setting(0.5, minimum=0.0)  # patches dropped (UTA) or [MASK]ed (mim); < 1
    strategy: str = setting("reversed_block", choices=STRATEGIES)


@dataclass
class EvalConfig:
    zeroshot: list[str] = field(default_factory=list)  # labelled data specs: zero-shot acc1
    batch_size: int = setting(64, minimum=1)


@dataclass
class UtaConfig(TrainSettings):
    """Everything that defines a UTA run: teacher, student, objective, data, and the engine's
    settings (evaluation at ``eval_every`` and at the end, on ``eval.zeroshot``)."""

    teacher: str = "sail:runs/demo/sail"  # sail:RUN | open_clip:ARCH/TAG | hf:CLIP_FOLDER
    student: StudentSpec = field(default_factory=StudentSpec)
    objective: str = setting("uta", choices=OBJECTIVES)  # uta | the baselines mim, distill
    mask: MaskConfig = field(default_factory=MaskConfig)
    cls_weight: float = setting(1.0, minimum=0.0)  # loss = tokens + cls_weight * CLS term
    data: list[str] = field(default_factory=lambda: ["fashion-mnist:train[:20000]",
                                                     "emoji:train"])
    data_root: str = "data"
    targets: str = setting("online", choices=TARGETS)  # online: teacher per batch | store
    stores: list[str] = field(default_factory=list)  # one per data spec, encoded with --tokens
    augment: bool = False  # random resized crop + flip (online targets only)
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # crop's area fraction
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=1e-3, weight_decay=0.05, beta1=0.9, beta2=0.98, warmup_fraction=0.1,
        min_lr_fraction=0.01, grad_clip=3.0))
    batch_size: int = setting(128, minimum=1)
    epochs: float = setting(10.0, above=0.0)
    num_workers: int = setting(0, minimum=0)  # image-decoding processes
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_config(config: UtaConfig) -> None:
    """UserError naming the first value that cannot work."""
    validate(config)
    if not config.mask.ratio < 1.0:
        raise UserError(f"config mask.ratio: {config.mask.ratio} is not in [0, 1)")
    low, high = (config.crop_scale + [0.0, 0.0])[:2]
    if len(config.crop_scale) != 2 or not 0 < low <= high <= 1:
        raise UserError(f"config crop_scale: {config.crop_scale} is not [low, high] with "
                        "0 < low <= high <= 1")
    if not config.data:
        raise UserError("config data: no training data; list dataset specs, e.g. emoji:train")
    if config.targets == "store":
        if len(config.stores) != len(config.data):
            raise UserError(f"config stores: targets=store needs one store per data spec "
                            f"({len(config.data)}), got {len(config.stores)}")
        if config.augment:
            raise UserError("config augment: stored targets are of the unaugmented images; "
                            "set augment=false or targets=online")
