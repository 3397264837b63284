"""UTA training: distil a frozen teacher into the student, on the SAIL trainer's machinery.

Run directory: ``config.json`` (resolved recipe), ``metrics.jsonl`` (one line per logged step),
``ckpt-*.safetensors/json`` + ``latest.json`` (atomic checkpoints), and at the end
``student.safetensors`` + ``uta.json`` (what ``vlalign.load_model`` reads as a ``UTAModel``).

Batch ``step`` (its images, augmentations and masks) is a pure function of (seed, step), so a
resumed run equals an uninterrupted one bit for bit. A time budget (``time_budget_s``) replaces
``epochs``: the learning-rate schedule runs on the fraction of the budget spent and training
stops when it is spent. The fair set-up for equal-wall-clock comparisons, not reproducible by
nature. Training time counts data loading, the teacher's forward and the student's step;
evaluation and checkpoints are excluded.
Under torchrun every rank trains on its slice of each global batch (masks are drawn for the
global batch), the student is wrapped in DDP (gradients averaged: every rank's loss is a mean
over its equal share) and a non-finite loss or gradient stops every rank, keeping the last good
checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from vlalign.config import to_dict
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.sail.config import OptimConfig
from vlalign.sail.distributed import all_reduce_sum
from vlalign.sail.optim import Lion, cosine_lr
from vlalign.uta.config import StudentSpec, UtaConfig, check_config
from vlalign.uta.data import ImageRows, StepBatches, collate, open_stores
from vlalign.uta.loss import LossTerms, distill_loss, mim_loss, uta_loss
from vlalign.uta.masking import keep_to_mask, sample_keep
from vlalign.uta.model import UTAModel
from vlalign.uta.student import StudentConfig, UTAStudent, student_config
from vlalign.uta.targets import StoredTargets, cache_targets, stored_backbone, unpack_targets
from vlalign.uta.teachers import Teacher, TeacherOutput, create_teacher
from vlalign.utils.checkpoint import (
    flatten_optimizer,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from vlalign.utils.distributed import init_from_env, on_rank_zero
from vlalign.utils.files import atomic_write_json
from vlalign.utils.precision import autocast_dtype, resolve_precision
from vlalign.utils.training import (
    UNBOUNDED_STEPS,
    check_finite,
    refuse_overwrite,
    resolve_device,
    step_limit,
    trim_metrics,
)

log = logging.getLogger(__name__)
Evaluator = Callable[[UTAModel, int], dict[str, float]]
SCHEDULE_RESOLUTION = 100_000  # a time budget's schedule advances in steps of budget / this


class Distiller(nn.Module):
    """Student + objective: (pixels, kept indices, teacher targets) -> loss terms. The unit DDP
    wraps, so every objective's forward goes through DDP's own call."""

    def __init__(self, student: UTAStudent, objective: str, cls_weight: float) -> None:
        super().__init__()
        self.student, self.objective, self.cls_weight = student, objective, cls_weight

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor | None,
                targets: TeacherOutput) -> LossTerms:
        tokens, pooled, weight = targets.tokens, targets.pooled, self.cls_weight
        if self.objective == "uta":
            out = self.student(pixels, keep)
            return uta_loss(out.cls, out.tokens, pooled, tokens, keep, weight)
        if self.objective == "mim":
            mask = keep_to_mask(keep, self.student.num_patches)
            out = self.student.forward_masked(pixels, mask)
            return mim_loss(out.cls, out.tokens, pooled, tokens, mask, weight)
        out = self.student(pixels)
        return distill_loss(out.cls, out.tokens, pooled, tokens, weight)


def build_student_config(spec: StudentSpec, teacher: Teacher, grid: tuple[int, int],
                         mask_token: bool) -> StudentConfig:
    """The student's shape: the spec, with the teacher's input size and (when the grid is square
    and divides it) a patch size that puts the student on the teacher's grid."""
    img_size = spec.img_size or teacher.preprocess.size
    patch = spec.patch_size
    if not patch:
        patch = img_size // grid[0] if grid[0] == grid[1] and img_size % grid[0] == 0 else 16
    shape = {k: v for k, v in (("dim", spec.dim), ("depth", spec.depth), ("heads", spec.heads))
             if v}
    try:
        return student_config(spec.size, teacher.dim, img_size=img_size, patch_size=patch,
                              mask_token=mask_token, **shape)
    except ValueError as error:
        raise UserError(f"config student: {error}") from None


def create_optimizer(student: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or Lion; no weight decay on norms, biases, the CLS/mask tokens and positions."""
    skip = student.no_weight_decay()
    decay, no_decay = [], []
    for name, param in student.named_parameters():
        (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (optim.beta1, optim.beta2)
    if optim.name == "lion":
        return Lion(groups, lr=optim.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=betas)


def step_keep(config: UtaConfig, step: int, batch_size: int, grid: tuple[int, int], rank: int,
              world_size: int) -> torch.Tensor:
    """This rank's kept indices of global batch ``step``: drawn for the whole global batch
    from a generator seeded by (seed, step), then sliced, so N ranks see one process's masks."""
    seed = int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0])
    keep = sample_keep(batch_size, grid, config.mask.ratio, config.mask.strategy,
                       generator=torch.Generator().manual_seed(seed))
    local = batch_size // world_size
    return keep[rank * local:(rank + 1) * local]


def _mean_over_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    return all_reduce_sum(values) / world_size


def train_uta(config: UtaConfig, run_dir: Path, resume: bool = False, progress: bool = True,
              max_steps: int | None = None, evaluate: Evaluator | None = None) -> dict[str, Any]:
    """Train a UTA student (or a baseline: ``objective`` mim / distill); returns the last
    logged metrics. ``max_steps`` stops early (the schedule still spans the full run).
    ``evaluate(model, step)`` is called on ``config.eval.every`` and at the end (the CLI passes
    ``vlalign.eval.uta_progress.zeroshot_evaluator`` for ``config.eval.zeroshot``)."""
    check_config(config)
    rank, world_size = init_from_env()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run_dir = Path(run_dir)
    refuse_overwrite(run_dir, resume)
    device = resolve_device(config.device)
    sources = [create_source(spec, config.data_root) for spec in config.data]
    teacher = create_teacher(config.teacher, device=str(device))
    side = teacher.preprocess.size
    teacher_grid = teacher.encode_image_tokens(torch.zeros(1, 3, side, side)).grid
    stores, targets = None, None
    if config.targets == "store":
        stores = open_stores(config.stores, sources, stored_backbone(teacher).identity,
                             teacher_grid)
        stored = StoredTargets(teacher, teacher_grid)
        paths = on_rank_zero(lambda: [cache_targets(stored, store, progress) for store in stores])
        targets = [np.load(path, mmap_mode="r") for path in paths]
    augment_seed = config.seed if config.augment else None
    data = ImageRows(sources, teacher.preprocess, stores, augment_seed, targets)
    stream = StepBatches(len(data), config.batch_size, config.seed, rank, world_size)
    total_steps = max(1, int(config.epochs * stream.steps_per_epoch))

    torch.manual_seed(config.seed)
    student_cfg = build_student_config(config.student, teacher, teacher_grid,
                                       mask_token=config.objective == "mim")
    student = UTAStudent(student_cfg).to(device)
    distiller = Distiller(student, config.objective, config.cls_weight)
    optimizer = create_optimizer(student, config.optim)
    model = UTAModel(student, teacher, config.teacher, {"objective": config.objective})
    identity = {"student": student_cfg.to_dict(), "teacher": teacher.identity}
    start, last_good, train_s = 0, None, 0.0
    checkpoint = load_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        tensors, info = checkpoint
        if info.get("uta") != identity:
            raise UserError(f"{run_dir}: its checkpoint is of another student or teacher "
                            f"({info.get('uta')}); use another --out")
        student.load_state_dict({k[8:]: v for k, v in tensors.items()
                                 if k.startswith("student.")})
        restore_optimizer(optimizer, tensors, info["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        start = last_good = info["step"]
        train_s = info["train_s"]
        log.info("resuming %s from step %d", run_dir, start)
    trainer = distiller
    if world_size > 1:
        trainer = DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.tmp"):  # left by a kill mid-write; never read
            stale.unlink()
        atomic_write_json(run_dir / "config.json",
                          {**to_dict(config), "resolved_student": student_cfg.to_dict()})
        trim_metrics(run_dir / "metrics.jsonl", start)

    def save(step: int) -> None:
        opt_tensors, opt_info = flatten_optimizer(optimizer)
        tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
        tensors |= opt_tensors | {"rng.torch": torch.get_rng_state()}
        save_checkpoint(run_dir, step, tensors, {"optimizer": opt_info, "config": to_dict(config),
                                                 "uta": identity, "train_s": train_s})

    budget = config.time_budget_s
    stop = step_limit(total_steps, budget, max_steps)
    autocast = autocast_dtype(config.precision, device)
    log.info("precision %s -> %s on %s", config.precision,
             resolve_precision(config.precision, device), device)
    params = [p for p in student.parameters() if p.requires_grad]
    loader = DataLoader(data, batch_sampler=stream.span(start, stop), collate_fn=collate,
                        num_workers=config.num_workers,
                        prefetch_factor=4 if config.num_workers else None)
    bar = tqdm(total=None if stop == UNBOUNDED_STEPS else stop, initial=start, unit="step",
               disable=not progress or rank != 0, desc=f"train {config.objective}",
               dynamic_ncols=True)
    metrics: dict[str, Any] = {}
    wait_start = time.perf_counter()
    with open(run_dir / "metrics.jsonl", "a") if rank == 0 else open("/dev/null", "w") as sink:
        for step, batch in enumerate(loader, start=start):
            data_s = time.perf_counter() - wait_start
            teacher_start = time.perf_counter()
            pixels = batch["pixels"].to(device, non_blocking=True)
            if "targets" in batch:
                targets = unpack_targets(batch["targets"].to(device), teacher_grid)
            else:
                targets = teacher.encode_image_tokens(pixels)
            targets = targets.to_grid(student_cfg.grid)
            teacher_s = time.perf_counter() - teacher_start
            compute_start = time.perf_counter()
            if student_cfg.img_size != side:
                pixels = F.interpolate(pixels, size=(student_cfg.img_size,) * 2, mode="bilinear",
                                       antialias=True, align_corners=False)
            keep = None
            if config.objective != "distill":
                keep = step_keep(config, step, config.batch_size, student_cfg.grid, rank,
                                 world_size)[:len(pixels)].to(device)
            at, total = step, total_steps
            if budget:  # the schedule runs on the fraction of the budget spent
                at, total = int(train_s / budget * SCHEDULE_RESOLUTION), SCHEDULE_RESOLUTION
            lr = cosine_lr(at, total, config.optim.lr, config.optim.warmup_fraction,
                           config.optim.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=autocast or torch.float32,
                                enabled=autocast is not None):
                terms = trainer(pixels, keep, targets)
            values = _mean_over_ranks(torch.stack([t.detach().float() for t in terms]),
                                      world_size)
            reduced = dict(zip(("loss", "loss_tokens", "loss_cls"), values))
            check_finite(step, reduced, last_good)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, config.optim.grad_clip or float("inf"))
            check_finite(step, {"gradient norm": grad_norm}, last_good)
            optimizer.step()
            compute_s = time.perf_counter() - compute_start
            step_s = data_s + teacher_s + compute_s
            if budget and world_size > 1:  # every rank must see the same clock
                step_s = float(_mean_over_ranks(torch.tensor([step_s], device=device),
                                                world_size)[0])
            train_s += step_s
            done = step + 1
            out_of_time = bool(budget) and train_s >= budget
            final = done == stop or out_of_time
            evaluate_now = evaluate is not None and (
                final or (config.eval.every and done % config.eval.every == 0))
            if done % config.log_every == 0 or final or evaluate_now:
                # tokens the student ran per image, CLS included
                tokens_run = 1 + (keep.shape[1] if config.objective == "uta"
                                  else student.num_patches)
                metrics = {"step": done, "epoch": round(done / stream.steps_per_epoch, 4),
                           "lr": lr, **{k: float(v) for k, v in reduced.items()},
                           "grad_norm": float(grad_norm), "tokens_run": tokens_run,
                           "img_per_s": config.batch_size / max(1e-9, step_s),
                           "data_s": round(data_s, 4), "teacher_s": round(teacher_s, 4),
                           "compute_s": round(compute_s, 4), "train_s": round(train_s, 2),
                           "bad_items": batch["bad"]}
                if evaluate_now and rank == 0:
                    student.eval()
                    metrics |= {f"val/{k}": v for k, v in evaluate(model, done).items()}
                    student.train()
                sink.write(json.dumps(metrics) + "\n")
                sink.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if done % config.checkpoint_every == 0 or final:
                on_rank_zero(lambda done=done: save(done))  # a failed write stops every rank
                last_good = done
            bar.update(1)
            if out_of_time:
                break
            wait_start = time.perf_counter()
    bar.close()
    model.info |= {"step": last_good or start, "train_s": round(train_s, 2)}
    on_rank_zero(lambda: model.save_pretrained(run_dir))
    return metrics
