"""UTA training: distil a frozen teacher into the student, as a task for the training engine.

The run directory is the engine's (config, metrics, checkpoints), and at the end
``student.safetensors`` + ``uta.json`` (what ``vlalign.load_model`` reads as a ``UTAModel``).
Batch ``step`` (its images, augmentations and masks) is a pure function of (seed, step), so a
resumed run equals an uninterrupted one bit for bit. With a time budget (``time_budget_s``) the
run stops when the budget is spent: the fair set-up for equal-wall-clock comparisons. Training
time counts data loading, the teacher's forward and the student's step. Under torchrun every
rank trains on its slice of each global batch (masks are drawn for the global batch).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vlalign.config import to_dict
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.train.loop import fit
from vlalign.train.precision import autocast_dtype, resolve_precision
from vlalign.train.run import RunDir
from vlalign.train.task import StepOutput, Task
from vlalign.train.trackers import check_trackers
from vlalign.uta.artifact import save_student
from vlalign.uta.config import StudentSpec, UtaConfig, check_config
from vlalign.uta.data import ImageRows, MaskingCollate, StepBatches, collate, open_stores
from vlalign.uta.loss import distill_loss, mim_loss, uta_loss
from vlalign.uta.masking import keep_for_positions, keep_to_mask
from vlalign.uta.student import StudentConfig, UTAStudent
from vlalign.uta.targets import StoredTargets, cache_targets, stored_backbone, unpack_targets
from vlalign.uta.teachers import Teacher, TeacherOutput, create_teacher, match_teacher_grid
from vlalign.utils.distributed import init_from_env, on_rank_zero, resolve_device

Evaluator = Callable[[UTAStudent, Teacher, int], dict[str, float]]


class StudentBatch(NamedTuple):
    """One rank's step: student pixels, kept patch indices (None: all), teacher targets."""

    pixels: torch.Tensor
    keep: torch.Tensor | None
    targets: TeacherOutput
    bad: int  # items of the batch that could not be read
    teacher_s: float  # seconds spent on the teacher's targets


class Distiller(nn.Module):
    """Student + objective: a batch -> this rank's share of the loss terms."""

    def __init__(self, student: UTAStudent, objective: str, cls_weight: float,
                 world_size: int = 1) -> None:
        super().__init__()
        self.student, self.objective, self.cls_weight = student, objective, cls_weight
        self.world_size = world_size

    def forward(self, batch: StudentBatch) -> StepOutput:
        tokens, pooled, weight = batch.targets.tokens, batch.targets.pooled, self.cls_weight
        pixels, keep = batch.pixels, batch.keep
        if self.objective == "uta":
            out = self.student(pixels, keep)
            terms = uta_loss(out.cls, out.tokens, pooled, tokens, keep, weight)
        elif self.objective == "mim":
            mask = keep_to_mask(keep, self.student.num_patches)
            out = self.student.forward_masked(pixels, mask)
            terms = mim_loss(out.cls, out.tokens, pooled, tokens, mask, weight)
        else:
            out = self.student(pixels)
            terms = distill_loss(out.cls, out.tokens, pooled, tokens, weight)
        share = 1.0 / self.world_size  # every rank's loss is a mean over an equal slice
        return StepOutput(terms.total * share, {"loss_tokens": terms.tokens * share,
                                                "loss_cls": terms.cls * share})


def build_student_config(spec: StudentSpec, teacher: Teacher, grid: tuple[int, int],
                         mask_token: bool) -> StudentConfig:
    """The student's shape: the spec, with the teacher's input size and (when the grid is square
    and divides it) a patch size that puts the student on the teacher's grid."""
    img_size = spec.img_size or teacher.preprocess.size
    patch = spec.patch_size
    if not patch and grid[0] == grid[1] and img_size % grid[0] == 0:
        patch = img_size // grid[0]
    return StudentConfig(name=spec.name, out_dim=teacher.dim, img_size=img_size,
                         patch_size=patch, dim=spec.dim, depth=spec.depth, heads=spec.heads,
                         drop_path=spec.drop_path, mask_token=mask_token)


def build_student(config: StudentConfig, spec: StudentSpec) -> UTAStudent:
    """The student of ``config``; a config timm cannot build is a one-line config error."""
    try:
        student = UTAStudent(config)
    except ValueError as error:
        raise UserError(f"config student: {error}") from None
    student.set_grad_checkpointing(spec.grad_checkpointing)
    return student


def step_keep(config: UtaConfig, grid: tuple[int, int], step: int,
              positions: list[int]) -> torch.Tensor:
    """Kept indices for the rows at ``positions`` of global batch ``step``: each row's own
    draw (seeded by seed, step, position), so N ranks see one process's masks."""
    return keep_for_positions(config.seed, step, positions, grid, config.mask.ratio,
                              config.mask.strategy)


class UtaTask(Task):
    """A UTA (or MIM / distillation) student: images and masks per step, the teacher's targets
    (online, or cached from stored token maps), the student and its teacher's spec out."""

    unit = "img"

    def __init__(self, config: UtaConfig, rank: int, world_size: int, progress: bool) -> None:
        self.config, self.rank, self.world_size = config, rank, world_size
        self.name = f"train {config.objective}"
        self.device = resolve_device(config.device)
        sources = [create_source(spec, config.data_root) for spec in config.data]
        self.teacher = create_teacher(config.teacher, device=str(self.device))
        side = self.teacher.preprocess.size
        self.teacher_grid = self.teacher.encode_image_tokens(torch.zeros(1, 3, side, side)).grid
        torch.manual_seed(config.seed)
        self.student = build_student(
            build_student_config(config.student, self.teacher, self.teacher_grid,
                                 mask_token=config.objective == "mim"),
            config.student).to(self.device)
        self.student_config = self.student.config
        stores, targets = None, None
        pixels = self.teacher.preprocess  # online: the teacher's input (the student's resized)
        if config.targets == "store":
            stores = open_stores(config.stores, sources, stored_backbone(self.teacher),
                                 self.teacher_grid)
            stored = StoredTargets(self.teacher, self.teacher_grid)
            # bf16 where the run would use it (3x faster on a bf16 CPU); else fp32
            bf16 = resolve_precision(config.precision, self.device) == "bf16"
            paths = on_rank_zero(lambda: [cache_targets(stored, store, progress,
                                                        precision="bf16" if bf16 else "fp32")
                                          for store in stores])
            targets = [np.load(path, mmap_mode="r") for path in paths]
            pixels = pixels.with_size(self.student_config.img_size)  # only the student's input
        elif self.teacher_grid != self.student_config.grid:
            self.teacher_grid = match_teacher_grid(self.teacher, self.student_config.grid)
        augment_seed = config.seed if config.augment else None
        self.data = ImageRows(sources, pixels, stores, augment_seed, targets, config.crop_scale)
        self.stream = StepBatches(len(self.data), config.batch_size, config.seed, rank,
                                  world_size)
        self.steps_per_epoch, self.samples_per_step = self.stream.steps_per_epoch, config.batch_size
        dtype = autocast_dtype(resolve_precision(config.precision, self.device), self.device)
        self.teacher_autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype
                                 else contextlib.nullcontext())
        self.module = Distiller(self.student, config.objective, config.cls_weight, world_size)

    def batches(self, start: int, stop: int) -> Iterator[StudentBatch]:
        config, grid = self.config, self.student_config.grid
        collate_fn = collate
        if config.objective != "distill":  # masks drawn beside the decoding, in the workers
            first = self.rank * (config.batch_size // self.world_size)
            collate_fn = MaskingCollate(partial(step_keep, config, grid), first)
        loader = DataLoader(self.data, batch_sampler=self.stream.span(start, stop),
                            collate_fn=collate_fn, num_workers=config.num_workers,
                            prefetch_factor=4 if config.num_workers else None)
        for batch in loader:
            began = time.perf_counter()
            pixels = batch["pixels"].to(self.device, non_blocking=True)
            if "targets" in batch:
                targets = unpack_targets(batch["targets"].to(self.device), self.teacher_grid)
            else:  # under the run's autocast, as EVA-02 runs its teacher
                with self.teacher_autocast:
                    targets = self.teacher.encode_image_tokens(self._teacher_pixels(pixels))
            targets = targets.to_grid(grid)
            teacher_s = time.perf_counter() - began
            if self.student_config.img_size != pixels.shape[-1]:
                pixels = F.interpolate(pixels, size=(self.student_config.img_size,) * 2,
                                       mode="bilinear", antialias=True, align_corners=False)
            keep = batch["keep"].to(self.device) if "keep" in batch else None
            yield StudentBatch(pixels, keep, targets, batch["bad"], teacher_s)

    def _teacher_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The batch at the teacher's input size (another one when the teacher runs on the
        student's grid)."""
        side = self.teacher.preprocess.size
        if pixels.shape[-1] == side:
            return pixels
        return F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True,
                             align_corners=False)

    def identity(self) -> dict[str, Any]:
        return {"student": self.student_config.to_dict(), "teacher": self.teacher.identity,
                "objective": self.config.objective}

    def no_weight_decay(self) -> set[str]:
        return {f"student.{name}" for name in self.student.no_weight_decay()}

    def batch_metrics(self, batch: StudentBatch) -> dict[str, float]:
        kept = batch.keep.shape[1] if self.config.objective == "uta" else self.student.num_patches
        return {"tokens_run": 1 + kept,  # tokens the student ran per image, CLS included
                "teacher_s": round(batch.teacher_s, 4), "bad_items": batch.bad}

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        save_student(run_dir, self.student, self.teacher, self.config.teacher,
                     {"objective": self.config.objective, **info})


def train_uta(config: UtaConfig, run_dir: Path, resume: bool = False, progress: bool = True,
              max_steps: int | None = None, evaluate: Evaluator | None = None) -> dict[str, Any]:
    """Train a UTA student (or a baseline: ``objective`` mim / distill); returns the last
    logged metrics. ``max_steps`` stops early (the schedule still spans the full run).
    ``evaluate(student, teacher, step)`` is called at ``eval_every`` and at the end (the CLI passes
    ``vlalign.eval.uta_progress.zeroshot_evaluator`` for ``config.eval.zeroshot``)."""
    check_config(config)
    check_trackers(config.report_to)
    rank, world_size = init_from_env()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run = RunDir(Path(run_dir), resume)
    task = UtaTask(config, rank, world_size, progress)
    hook = None if evaluate is None else (lambda step: evaluate(task.student, task.teacher, step))
    recipe = {**to_dict(config), "resolved_student": task.student_config.to_dict()}
    return fit(task, config, run, recipe, evaluate=hook, progress=progress,
               max_steps=max_steps)
