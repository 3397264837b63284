"""Mixed precision: the autocast dtype a run uses, with ``auto`` picking what is fast here.

bf16 is fast on GPUs and on CPUs with bf16 matrix instructions (AMX, AVX512-BF16), but on a
CPU without them (AVX2 only) a bf16 matmul runs about 100x slower than fp32. ``auto`` therefore
measures instead of guessing: on the CPU it times one small matmul in both dtypes.
"""

from __future__ import annotations

import functools
import time

import torch

from vlalign.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@functools.cache
def cpu_bf16_is_fast(size: int = 256, repeats: int = 3) -> bool:
    """True when a bf16 matmul on this CPU takes under 0.8 of the fp32 time."""
    def seconds(dtype: torch.dtype) -> float:
        x = torch.randn(size, size).to(dtype)
        x @ x  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            x @ x
        return time.perf_counter() - start

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
