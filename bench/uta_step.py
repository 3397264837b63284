"""Student step time at ViT-B/16 (timm's eva02_base_patch14_224 at patch 16, the UTA-B/16
layout), 224 px: UTA (kept tokens only) at mask ratios 0.25 / 0.5 / 0.75 versus the
EVA-02-style MIM baseline (all 196 tokens, masked ones replaced by [MASK]) and plain feature
distillation (no masking), on one student, in one run.

A step is the training engine's own step (``vlalign.train.loop.fit``): the objective's forward
and loss (``vlalign.uta.train.Distiller``) under the run's autocast, the finite checks,
backward, clipping, the learning guard and the AdamW update of the UTA recipe, with one metrics
line per step. The task is synthetic and in memory: random pixels and random teacher targets
made once on the device (the teacher's forward is the same for every method and is not timed),
masks drawn before the run starts. Times are the engine's per-step ``compute_s`` from its
metrics.jsonl. Precision: bf16 autocast (``--precision auto``, the default, falls back to fp32
on CPUs where bf16 is slow; see vlalign/train/precision.py). The methods are timed in
interleaved rounds within one engine run (one student, one optimiser: step k runs method
k mod 5), so a background load shifts all of them alike; round 0 warms every method up and is
not counted; each row is the median over the timed rounds, with images/s, tokens run per image
and the ratio to the MIM step (the issue's target: UTA at 0.5 costs at most 0.6 of it). MIM's
cost does not depend on its ratio (every token runs), so it is timed once, at 0.5.

    .venv/bin/python bench/uta_step.py [--batch 8] [--steps 3] [--device cpu|cuda]
                                       [--precision auto|bf16|fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
from typing import NamedTuple

import torch
from torch import nn

import vlalign  # noqa: F401
from common import (
    SyntheticTask,
    engine_compute_times,
    machine,
    matmul_rate,
    print_table,
    write_results,
)
from vlalign.config import to_dict
from vlalign.train.config import TrainSettings
from vlalign.train.precision import resolve_precision
from vlalign.train.task import StepOutput
from vlalign.uta.config import UtaConfig
from vlalign.uta.masking import sample_keep
from vlalign.uta.student import UTAStudent, create_student
from vlalign.uta.teachers import TeacherOutput
from vlalign.uta.train import Distiller, StudentBatch

GRID = (14, 14)  # 224 / 16
METHODS = [("uta", 0.25), ("uta", 0.5), ("uta", 0.75), ("mim", 0.5), ("distill", 0.0)]


class MethodBatch(NamedTuple):
    """A step's batch and the index (in ``METHODS``) of the objective that trains on it."""

    method: int
    batch: StudentBatch


class Methods(nn.Module):
    """One student and a ``Distiller`` per method: a batch runs the objective it names."""

    def __init__(self, student: UTAStudent) -> None:
        super().__init__()
        self.student = student  # parameter names "student.*", as in UtaTask
        # a plain list, not a ModuleList: the shared student is registered once, above
        self.distillers = [Distiller(student, objective, cls_weight=1.0)
                           for objective, _ in METHODS]

    def forward(self, batch: MethodBatch) -> StepOutput:
        return self.distillers[batch.method](batch.batch)


class SyntheticUtaTask(SyntheticTask):
    """The interleaved methods on one batch of random pixels and teacher targets."""

    name, unit = "bench uta", "img"

    def __init__(self, student: UTAStudent, device: torch.device, batch: int, rounds: int,
                 teacher_dim: int) -> None:
        n = GRID[0] * GRID[1]
        pixels = torch.randn(batch, 3, 224, 224, device=device)
        targets = TeacherOutput(torch.randn(batch, n, teacher_dim, device=device),
                                torch.randn(batch, teacher_dim, device=device), GRID)
        batches = []
        for round_ in range(rounds + 1):  # round 0 warms every method up
            for i, (objective, ratio) in enumerate(METHODS):
                keep = None
                if objective != "distill":
                    keep = sample_keep(batch, GRID, ratio, "reversed_block",
                                       generator=round_).to(device)
                batches.append(MethodBatch(i, StudentBatch(pixels, keep, targets, 0, 0.0)))
        super().__init__(Methods(student), device, batches, batch)
        self.rounds, self.done = rounds, 0

    def no_weight_decay(self) -> set[str]:
        return {f"student.{name}" for name in self.module.student.no_weight_decay()}

    def after_step(self) -> None:
        super().after_step()
        self.done += 1
        if self.done % len(METHODS) == 0:
            print(f"round {self.done // len(METHODS) - 1}/{self.rounds} done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="autocast dtype (auto: bf16 unless it is slow on this CPU)")
    parser.add_argument("--teacher-dim", type=int, default=768,
                        help="joint-space dimension of the (random) teacher targets")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's; 1 avoids oversubscription "
                        "on a machine busy with other work)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = create_student("eva02_base_patch14_224", args.teacher_dim, patch_size=16,
                             mask_token=True).to(device)
    b, n = args.batch, GRID[0] * GRID[1]
    precision = resolve_precision(args.precision, device)
    settings = TrainSettings(optim=UtaConfig().optim, batch_size=b, precision=precision,
                             device=args.device)
    task = SyntheticUtaTask(student, device, b, args.steps, args.teacher_dim)
    steps = (args.steps + 1) * len(METHODS)
    compute_s = engine_compute_times(task, settings, steps, to_dict(settings))

    rows = []
    for i, (objective, ratio) in enumerate(METHODS):
        times = compute_s[len(METHODS) + i::len(METHODS)]  # this method's timed rounds
        seconds = statistics.median(times)
        kept = round((1 - ratio) * n) if objective == "uta" else n
        rows.append({"method": objective, "mask_ratio": ratio, "tokens": kept + 1,
                     "step_s": seconds, "img_per_s": b / seconds})
    mim = next(r["step_s"] for r in rows if r["method"] == "mim")
    for row in rows:
        row["vs_mim"] = row["step_s"] / mim
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_rate(dtype, device, n=2048)
    info = machine()
    print(f"\nmachine: {info}\n{precision} matmul rate: {peak / 1e9:.0f} GFLOP/s; "
          f"ViT-B/16 student, batch {b}, {args.device}, the engine's step")
    print_table(rows, ["method", "mask_ratio", "tokens", "step_s", "img_per_s", "vs_mim"])
    path = write_results("uta_step", {
        "machine": info, "device": args.device, "precision": precision, "batch": b,
        "rounds": args.steps, "matmul_flops": peak, "optim": to_dict(settings.optim),
        "rows": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
