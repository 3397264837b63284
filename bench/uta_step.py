"""Student step time at ViT-B/16, 224 px: UTA (kept tokens only) at mask ratios 0.25 / 0.5 /
0.75 versus the EVA-02-style MIM baseline (all 196 tokens, masked ones replaced by [MASK]) and
plain feature distillation (no masking), on one student, in one run.

A step is forward + loss + backward + AdamW update on random pixels and random teacher targets
(the teacher's forward is the same for every method and is not timed; masks are drawn before
the clock starts), under bf16 autocast (``--precision auto``, the default, falls back to fp32 on
CPUs where bf16 is slow; see vlalign/utils/precision.py). The methods are timed in interleaved
rounds, so a background load shifts all of them alike; each row is the median over rounds,
with images/s, tokens run per image and the ratio to the MIM step (the issue's target: UTA at
0.5 costs at most 0.6 of it). MIM's cost does not depend on its ratio (every token runs), so it
is timed once, at 0.5.

    .venv/bin/python bench/uta_step.py [--batch 8] [--steps 3] [--device cpu|cuda]
                                       [--precision auto|bf16|fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

import vlalign  # noqa: F401
from common import machine, matmul_rate, print_table, sync, write_results  # noqa: I001
from vlalign.sail.config import OptimConfig
from vlalign.uta.masking import sample_keep
from vlalign.uta.student import create_student
from vlalign.uta.teachers import TeacherOutput
from vlalign.uta.train import Distiller, create_optimizer
from vlalign.utils.precision import resolve_precision

GRID = (14, 14)  # 224 / 16
METHODS = [("uta", 0.25), ("uta", 0.5), ("uta", 0.75), ("mim", 0.5), ("distill", 0.0)]


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
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = create_student("base", args.teacher_dim, mask_token=True).to(device)
    optimizer = create_optimizer(student, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05))
    b, n = args.batch, GRID[0] * GRID[1]
    pixels = torch.randn(b, 3, 224, 224, device=device)
    targets = TeacherOutput(torch.randn(b, n, args.teacher_dim, device=device),
                            torch.randn(b, args.teacher_dim, device=device), GRID)
    precision = resolve_precision(args.precision, device)
    autocast = precision == "bf16"

    def step_fn(objective: str, ratio: float, round_: int):
        distiller = Distiller(student, objective, cls_weight=1.0)
        keep = None
        if objective != "distill":
            keep = sample_keep(b, GRID, ratio, "reversed_block", generator=round_).to(device)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = distiller(pixels, keep, targets).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    times: dict[int, list[float]] = {i: [] for i in range(len(METHODS))}
    for round_ in range(args.steps + 1):  # round 0 warms every method up
        for i, (objective, ratio) in enumerate(METHODS):
            step = step_fn(objective, ratio, round_)
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if round_:
                times[i].append(time.perf_counter() - start)
        print(f"round {round_}/{args.steps} done", flush=True)

    rows = []
    for i, (objective, ratio) in enumerate(METHODS):
        seconds = sorted(times[i])[len(times[i]) // 2]
        kept = round((1 - ratio) * n) if objective == "uta" else n
        rows.append({"method": objective, "mask_ratio": ratio, "tokens": kept + 1,
                     "step_s": seconds, "img_per_s": b / seconds})
    mim = next(r["step_s"] for r in rows if r["method"] == "mim")
    for row in rows:
        row["vs_mim"] = row["step_s"] / mim
    dtype = torch.bfloat16 if autocast else torch.float32
    peak = matmul_rate(dtype, device, n=2048)
    info = machine()
    print(f"\nmachine: {info}\n{precision} matmul rate: {peak / 1e9:.0f} GFLOP/s; "
          f"ViT-B/16 student, batch {b}, {args.device}")
    print_table(rows, ["method", "mask_ratio", "tokens", "step_s", "img_per_s", "vs_mim"])
    path = write_results("uta_step", {
        "machine": info, "device": args.device, "precision": precision, "batch": b,
        "rounds": args.steps, "matmul_flops": peak, "rows": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
