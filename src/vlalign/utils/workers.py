"""How many data-loading worker processes to start: one per spare CPU core, capped."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    return len(os.sched_getaffinity(0))


def default_workers(limit: int = 8) -> int:
    """Decoding workers beside the main process: the spare cores, at least 1, at most ``limit``."""
    return max(1, min(limit, available_cpus() - 1))
