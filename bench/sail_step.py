"""One SAIL training step of the paper-sized heads: the engine's step versus a plain one.

Heads: vision GLU 2048 -> 16384 -> 1024 (83.9M), text GLU 1024 -> 8192 -> 1024 (25.2M), two
caption positives, sigmoid loss, Lion, random features. "vlalign" is the training engine's own
step (``vlalign.train.loop.fit`` on a synthetic in-memory task: the same random batch, on the
device, every step; schedule, autocast, finite checks, clipping, the learning guard, Lion, one
metrics line per step), timed from the engine's per-step ``compute_s`` in its metrics.jsonl;
"vlalign-saved" the same with ``loss_save_grads`` (dL/dlogits kept from the forward, not
recomputed). "plain" is the same step written the obvious way: full B x B logits and a dense
+-1 label matrix (as the official code does), under the same autocast, Lion and clipping. Each
(implementation, batch) runs in its own process so peak memory is its own (GPU: allocated;
CPU: resident; the engine's final checkpoint is excluded). Each configuration runs one warm-up
step and ``--steps`` timed steps; a row is the median over the timed steps.

Precision: ``--precision auto`` (the default) is the engine's rule (vlalign/train/precision.py):
bf16 on a GPU and on a CPU where bf16 matmuls are fast, else fp32 (bf16 is ~100x slower on an
AVX2-only CPU). The useful FLOP rate (forward + backward matmuls) is divided by the measured
matmul rate of that dtype in the same run, the higher of a measurement before and one after the
rows: ``ratio_to_bf16_matmul`` (``ratio_to_fp32_matmul`` when the run is fp32). One JSON line
per configuration, then a table, then bench/results/sail_step.json.

    .venv/bin/python bench/sail_step.py [--batch 4096 32768] [--steps 2]
                                        [--precision auto|bf16|fp32] [--threads N]
                                        [--impl vlalign vlalign-saved plain]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import vlalign  # noqa: F401
from common import (
    SyntheticTask,
    engine_compute_times,
    machine,
    matmul_rate,
    peak_memory_gb,
    print_table,
    sync,
    write_results,
)
from vlalign.config import to_dict
from vlalign.errors import UserError
from vlalign.sail.config import HeadConfig, OptimConfig, SailConfig
from vlalign.sail.train import SailModule
from vlalign.store.stream import Batch
from vlalign.train.optim import create_optimizer
from vlalign.train.precision import resolve_precision

IMAGE_DIM, TEXT_DIM, EMBED, POSITIVES = 2048, 1024, 1024, 2
DEFAULT_BATCHES = [4096, 32768]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
IMPLS = ("vlalign", "vlalign-saved", "plain")


def useful_flops(batch: int) -> float:
    """Matmul FLOPs of forward + backward: 6 per weight per row, plus the logits (6 B^2 d each)."""
    vision = 2 * IMAGE_DIM * 8 * IMAGE_DIM + 8 * IMAGE_DIM * EMBED
    text = 2 * TEXT_DIM * 8 * TEXT_DIM + 8 * TEXT_DIM * EMBED
    return 6 * batch * (vision + POSITIVES * text) + POSITIVES * 6 * batch * batch * EMBED


def _config(batch: int, precision: str, save_grads: bool = False) -> SailConfig:
    return SailConfig(vision_head=HeadConfig("glu", 8), text_head=HeadConfig("glu", 8),
                      embed_dim=EMBED, loss="sigmoid", loss_block_size=4096, batch_size=batch,
                      precision=precision, verify_stores=False, loss_save_grads=save_grads,
                      optim=OptimConfig(lr=1e-5, weight_decay=1e-4))


def _features(batch: int, device: torch.device) -> Batch:
    """One batch of random stored-feature-like inputs, float32 on the device."""
    images = torch.randn(batch, IMAGE_DIM, device=device)
    texts = [torch.randn(batch, TEXT_DIM, device=device) for _ in range(POSITIVES)]
    return Batch(0, images, texts)


class SyntheticSailTask(SyntheticTask):
    """SAIL heads on one random batch, repeated: the engine's step with no data loading."""

    name, unit = "bench sail", "pairs"

    def __init__(self, config: SailConfig, device: torch.device) -> None:
        torch.manual_seed(0)
        module = SailModule(config, IMAGE_DIM, TEXT_DIM).to(device)
        super().__init__(module, device, [_features(config.batch_size, device)],
                         config.batch_size)

    def watched_parameters(self) -> list[torch.nn.Parameter]:
        heads = (self.module.vision_head, self.module.text_head)
        return [p for head in heads for p in head.parameters() if p.requires_grad]


def engine_step(batch: int, steps: int, precision: str, device: torch.device,
                save_grads: bool = False) -> tuple[float, float]:
    """Median engine ``compute_s`` over ``steps`` steps after one warm-up; peak memory (GiB)."""
    config = _config(batch, precision, save_grads)
    task = SyntheticSailTask(config, device)
    times = engine_compute_times(task, config, steps + 1, to_dict(config))
    return statistics.median(times[1:]), task.peak_memory_gb


def plain_step(batch: int, steps: int, precision: str,
               device: torch.device) -> tuple[float, float]:
    """The step written by hand: median seconds over ``steps`` after one warm-up; peak GiB."""
    config = _config(batch, precision)
    torch.manual_seed(0)
    module = SailModule(config, IMAGE_DIM, TEXT_DIM).to(device)
    params = list(module.parameters())
    optimizer = create_optimizer("lion", module.named_parameters(), 1e-5, 1e-4, (0.9, 0.99))
    features = _features(batch, device)
    images, texts = features.images, features.texts
    labels = 2 * torch.eye(batch, device=device) - 1  # dense B x B, as the official code
    dtype = DTYPES[precision]

    def plain_loss() -> torch.Tensor:
        img = module.encode_image_features(images)
        losses = []
        for t in texts:
            txt = module.encode_text_features(t)
            logits = module.loss.scale * img.float() @ txt.float().T + module.loss.bias
            losses.append(-F.logsigmoid(labels * logits).sum() / batch**2)
        return torch.stack(losses).mean()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = plain_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    times = []
    for _ in range(steps + 1):  # the first is the warm-up
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), peak_memory_gb(device)


def worker(impl: str, batch: int, steps: int, precision: str) -> dict:
    """Run in a child process: one configuration's step time and peak memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    row: dict = {"impl": impl, "batch": batch, "precision": precision}
    try:
        if impl == "plain":
            seconds, peak = plain_step(batch, steps, precision, device)
        else:
            seconds, peak = engine_step(batch, steps, precision, device,
                                        save_grads=impl == "vlalign-saved")
    except (MemoryError, RuntimeError, UserError) as error:
        return row | {"error": str(error).splitlines()[0][:80]}
    return row | {"step_s": seconds, "pairs_per_s": batch / seconds,
                  "flop_rate": useful_flops(batch) / seconds, "peak_memory_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", "--batches", dest="batches", type=int, nargs="+",
                        action="extend", metavar="B",
                        help="global batch sizes, repeatable (default 4096 32768)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="autocast dtype (auto: bf16 unless it is slow on this CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="address-space cap for each child (an OOM is reported, not fatal)")
    parser.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS,
                        help="implementations to time (default all: the engine, the engine "
                        "keeping the loss gradients from the forward, the plain step)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        limit = int(args.memory_limit_gb * 2**30)
        if not torch.cuda.is_available():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps,
                                args.precision)))
        return
    batches = args.batches or DEFAULT_BATCHES
    precision = resolve_precision(args.precision, device)  # once, so every child agrees
    if precision not in DTYPES:
        raise SystemExit(f"precision {precision} is not benchmarked here; pass --precision "
                         "bf16 or fp32")
    peak = matmul_rate(DTYPES[precision], device)
    ratio = f"ratio_to_{precision}_matmul"
    rows = []
    for batch in batches:
        for impl in args.impl:
            out = subprocess.run([sys.executable, __file__, "--worker", impl, str(batch),
                                  "--steps", str(args.steps), "--precision", precision,
                                  "--threads", str(args.threads), "--memory-limit-gb",
                                  str(args.memory_limit_gb)], capture_output=True, text=True)
            lines = out.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if lines else {
                "impl": impl, "batch": batch, "precision": precision,
                "error": f"exit {out.returncode} (killed?)"}
            rows.append(row)
            print(f"# {row['impl']} at {batch}: {row.get('step_s', row.get('error'))}", flush=True)
    # the ceiling: the higher of the matmul rates measured before and after the rows (a shared
    # machine's rate drifts; the higher one gives the conservative ratio)
    peak = max(peak, matmul_rate(DTYPES[precision], device))
    for row in rows:
        if "flop_rate" in row:
            row[ratio] = row["flop_rate"] / peak
    for batch in batches:
        plain = next((r for r in rows if r["batch"] == batch and r["impl"] == "plain"), {})
        for ours in (r for r in rows if r["batch"] == batch and r["impl"] != "plain"):
            if "peak_memory_gb" in ours and "peak_memory_gb" in plain:
                ours["memory_vs_plain"] = ours["peak_memory_gb"] / plain["peak_memory_gb"]
    for row in rows:
        print(json.dumps(row))
    info = machine()
    print(f"\nmachine: {info}\n{precision} matmul rate: {peak / 1e9:.0f} GFLOP/s")
    print_table(rows, ["impl", "batch", "step_s", "pairs_per_s", ratio, "peak_memory_gb",
                       "memory_vs_plain", "error"])
    path = write_results("sail_step", {
        "machine": info, "precision": precision, "steps": args.steps,
        f"{precision}_matmul_flops": peak, "rows": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
