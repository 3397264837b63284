"""One SAIL training step of the paper-sized heads: vlalign's step versus a plain one.

Heads: vision GLU 2048 -> 16384 -> 1024 (83.9M), text GLU 1024 -> 8192 -> 1024 (25.2M), two
caption positives, sigmoid loss, Lion, bf16 autocast, random features. "plain" is the same
step written the obvious way: full B x B logits and a dense +-1 label matrix (as the official
code does). Each (implementation, batch) runs in its own process so peak RSS is its own.
Reports pairs/s, useful FLOP rate / the bf16 matmul rate measured in the same run, and peak RSS.

    .venv/bin/python bench/sail_step.py [--batches 4096 32768] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import vlalign  # noqa: F401
from common import machine, matmul_rate, peak_rss_mb, print_table, write_results  # noqa: I001
from vlalign.sail.config import HeadConfig, OptimConfig, SailConfig
from vlalign.sail.optim import create_optimizer
from vlalign.sail.train import SailModule

IMAGE_DIM, TEXT_DIM, EMBED, POSITIVES = 2048, 1024, 1024, 2


def useful_flops(batch: int) -> float:
    """Matmul FLOPs of forward + backward: 6 per weight per row, plus the logits (6 B^2 d each)."""
    vision = 2 * IMAGE_DIM * 8 * IMAGE_DIM + 8 * IMAGE_DIM * EMBED
    text = 2 * TEXT_DIM * 8 * TEXT_DIM + 8 * TEXT_DIM * EMBED
    return 6 * batch * (vision + POSITIVES * text) + POSITIVES * 6 * batch * batch * EMBED


def _step_fn(impl: str, batch: int, device: torch.device):
    config = SailConfig(vision_head=HeadConfig("glu", 8), text_head=HeadConfig("glu", 8),
                        embed_dim=EMBED, loss="sigmoid", loss_block_size=4096,
                        optim=OptimConfig(lr=1e-5, weight_decay=1e-4))
    torch.manual_seed(0)
    module = SailModule(config, IMAGE_DIM, TEXT_DIM).to(device)
    params = list(module.parameters())
    optimizer = create_optimizer("lion", params, 1e-5, 1e-4, (0.9, 0.99))
    images = torch.randn(batch, IMAGE_DIM, device=device)
    texts = {f"p{i}": torch.randn(batch, TEXT_DIM, device=device) for i in range(POSITIVES)}
    labels = None
    if impl == "plain":
        labels = 2 * torch.eye(batch, device=device) - 1  # dense B x B, as the official code

    def plain_loss() -> torch.Tensor:
        img = module.encode_image_features(images)
        losses = []
        for t in texts.values():
            txt = module.encode_text_features(t)
            logits = module.loss.scale * img.float() @ txt.float().T + module.loss.bias
            losses.append(-F.logsigmoid(labels * logits).sum() / batch**2)
        return torch.stack(losses).mean()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = plain_loss() if impl == "plain" else module(images, texts)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def worker(impl: str, batch: int, steps: int) -> dict:
    """Run in a child process: time ``steps`` steps after one warm-up, report peak memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        step = _step_fn(impl, batch, device)
        step()  # warm-up
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds = (time.perf_counter() - start) / steps
    except (MemoryError, RuntimeError) as error:
        return {"impl": impl, "batch": batch, "error": str(error).splitlines()[0][:80]}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else peak_rss_mb())
    return {"impl": impl, "batch": batch, "step_s": seconds, "pairs_per_s": batch / seconds,
            "flop_rate": useful_flops(batch) / seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="address-space cap for each child (an OOM is reported, not fatal)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        limit = int(args.memory_limit_gb * 2**30)
        if not torch.cuda.is_available():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps)))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_rate(torch.bfloat16, device)
    rows = []
    for batch in args.batches:
        for impl in ("vlalign", "plain"):
            out = subprocess.run([sys.executable, __file__, "--worker", impl, str(batch),
                                  "--steps", str(args.steps), "--memory-limit-gb",
                                  str(args.memory_limit_gb)], capture_output=True, text=True)
            lines = out.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if lines else {
                "impl": impl, "batch": batch, "error": f"exit {out.returncode} (killed?)"}
            if "flop_rate" in row:
                row["vs_bf16_matmul"] = row["flop_rate"] / peak
            rows.append(row)
            print(json.dumps(row), flush=True)
    for batch in args.batches:
        ours = next(r for r in rows if r["batch"] == batch and r["impl"] == "vlalign")
        plain = next(r for r in rows if r["batch"] == batch and r["impl"] == "plain")
        if "peak_mb" in ours and "peak_mb" in plain:
            ours["memory_vs_plain"] = ours["peak_mb"] / plain["peak_mb"]
    print(f"\nmachine: {machine()}\nbf16 matmul rate: {peak / 1e9:.0f} GFLOP/s")
    print_table(rows, ["impl", "batch", "step_s", "pairs_per_s", "vs_bf16_matmul", "peak_mb",
                       "memory_vs_plain", "error"])
    path = write_results("sail_step", {"machine": machine(), "bf16_matmul_flops": peak,
                                       "rows": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
