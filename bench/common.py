"""Shared benchmark helpers: machine description, matmul peak, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from vlalign.train.config import TrainSettings
from vlalign.train.task import Task

# where each benchmark writes NAME.json: $BENCH_RESULTS if set (bench/gpu.sh sets it to $OUT)
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict[str, str | int]:
    """CPU/GPU model, cores and library versions, for the results header."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, str | int] = {"date": date.today().isoformat(), "cpu": cpu,
                                  "cores": os.cpu_count() or 0,
                                  "torch_threads": torch.get_num_threads(),
                                  "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, device: torch.device,
          warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """Measured FLOP/s of an n x n x n matmul: the machine's own ceiling for ratios."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, repeats=5, device=device)
    return 2 * n**3 / seconds


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def cpu_bf16_flags() -> dict[str, bool]:
    """Whether the CPU has bf16 matrix instructions (AVX-512 BF16, AMX), which decide whether
    bf16 autocast is fast on it; both False where /proc/cpuinfo is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


class SyntheticTask(Task):
    """An in-memory task for timing the engine's own step (``vlalign.train.loop.fit``): the
    batches are built once, on the device, and cycled (``batches[step % len(batches)]``), so
    no data loading is timed. After every applied step the device is synchronised (so the
    engine's ``compute_s`` includes the optimiser's kernels, not only the ones its own syncs
    wait for) and the peak memory so far is recorded: read after the last step, it excludes
    the final checkpoint the engine writes. Subclasses set ``module``, ``name``, ``unit`` and
    pass the batches."""

    def __init__(self, module: torch.nn.Module, device: torch.device, batches: list[Any],
                 samples_per_step: int) -> None:
        self.module, self.device, self._batches = module, device, batches
        self.samples_per_step = samples_per_step
        self.steps_per_epoch = 1  # set by ``engine_compute_times`` to the run's length
        self.peak_memory_gb = 0.0

    def batches(self, start: int, stop: int) -> Iterator[Any]:
        for step in range(start, stop):
            yield self._batches[step % len(self._batches)]

    def after_step(self) -> None:
        sync(self.device)
        self.peak_memory_gb = peak_memory_gb(self.device)

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        """Nothing to export: the run folder is temporary."""


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated on the GPU, resident on the CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mb() / 1024


def engine_compute_times(task: SyntheticTask, settings: TrainSettings, steps: int,
                         config: dict[str, Any] | None = None) -> list[float]:
    """Run ``fit`` on ``task`` for ``steps`` steps (the schedule spans exactly them) into a
    temporary run folder, logging every step and checkpointing only at the end; the engine's
    ``compute_s`` of every step, in order, from its metrics.jsonl."""
    from vlalign.config import to_dict
    from vlalign.train.loop import fit
    from vlalign.train.run import RunDir

    settings = replace(settings, epochs=1.0, time_budget_s=0.0, log_every=1,
                       checkpoint_every=steps + 1, eval_every=0, report_to=[])
    task.steps_per_epoch = steps
    with tempfile.TemporaryDirectory(prefix="vlalign-bench-") as tmp:
        run = RunDir(Path(tmp) / "run", resume=False)
        fit(task, settings, run, config if config is not None else to_dict(settings),
            progress=False, max_steps=steps)
        lines = (run.path / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["compute_s"] for line in lines]
    if len(times) != steps:
        raise RuntimeError(f"the engine logged {len(times)} steps, not {steps}")
    return times
