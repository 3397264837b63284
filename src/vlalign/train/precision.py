"""Mixed precision: the autocast dtype a run uses (``auto`` picks what is fast here), and the
loss scaling that makes fp16 safe.

bf16 is fast on GPUs and on CPUs with bf16 matrix instructions (AMX, AVX512-BF16), but on a
CPU without them (AVX2 only) a bf16 matmul runs about 100x slower than fp32. ``auto`` therefore
reads the CPU's flags (Linux), and where they are not listed times a matmul in both dtypes.
"""

from __future__ import annotations

import functools
import time

import torch

from vlalign.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul units


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux), or None where the file does not say."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.cache
def cpu_bf16_is_fast(size: int = 512, trials: int = 5) -> bool:
    """True on a CPU with bf16 matrix instructions: by its flags where Linux lists them
    (a timing is noisy on a shared machine: 256 x 256 once picked fp32 on an AVX-512 BF16
    host), else when the fastest of ``trials`` bf16 matmuls takes under 0.8 of fp32's."""
    flags = cpu_flags()
    if flags is not None:
        return any(flag in flags for flag in BF16_FLAGS)

    def seconds(dtype: torch.dtype) -> float:
        x = torch.randn(size, size).to(dtype)
        x @ x  # warm-up
        best = float("inf")
        for _ in range(trials):
            start = time.perf_counter()
            x @ x
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.bfloat16) < 0.8 * seconds(torch.float32)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a GPU that supports it (else fp16), bf16 on a CPU where it is fast,
    else fp32; explicit choices pass through."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: valid values are {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_is_fast() else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to on ``device`` (None: run in fp32, autocast off)."""
    return _DTYPES[resolve_precision(precision, device)]


class Precision:
    """A run's arithmetic: the autocast context, and for fp16 the loss scaler that keeps small
    gradients above fp16's smallest subnormal (SAIL's |B|^2-normalised loss at B = 32,768 gives
    head gradients around 1e-8 to 1e-10, which unscaled fp16 flushes to zero). fp32 on CUDA
    allows TF32 matmuls."""

    def __init__(self, requested: str, device: torch.device) -> None:
        self.requested, self.device = requested, device
        self.name = resolve_precision(requested, device)
        self.dtype = _DTYPES[self.name]
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None
        if self.name == "fp32" and device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self) -> torch.autocast:
        """Context for the forward pass (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward of ``loss`` (scaled under fp16), leaving true, unscaled gradients."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimiser step; False when fp16's scaler skipped it (an inf gradient: the scale
        is lowered and the step retried on the next batch, as torch.amp intends)."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state(self) -> dict[str, float]:
        """The scaler's state for a checkpoint (empty without one)."""
        return {} if self.scaler is None else dict(self.scaler.state_dict())

    def load_state(self, state: dict[str, float]) -> None:
        """Restore what ``state`` saved."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict({**self.scaler.state_dict(), **state})
