"""torchrun plumbing shared by encoding and training: join the group, agree, fail together.

Every helper is a no-op (or the identity) without an initialised process group, so code written
for N ranks runs unchanged in one process. The collectives here carry small Python objects
(counts, short messages) and scalars to log, never tensors of data.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vlalign.errors import UserError

T = TypeVar("T")


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...), if any.

    NCCL when CUDA is available, gloo otherwise. Without torchrun's variables (or with one
    process) nothing is initialised and (0, 1) is returned. The group is destroyed at exit: left
    to interpreter teardown, gloo's threads can abort the process after its work is done.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_destroy)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world_info()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_info(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world_size) of the group if torch.distributed is initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def gather_objects(obj: T) -> list[T]:
    """``obj`` from every rank, in rank order (``[obj]`` in one process)."""
    world_size = world_info()[1]
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _describe(error: Exception) -> tuple[bool, str]:
    """(is a user error, one-line message) for sending an exception to the other ranks."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return isinstance(error, UserError), text


def _raise_remote(rank: int, failure: tuple[bool, str]) -> None:
    user_error, message = failure
    if user_error:
        raise UserError(f"rank {rank}: {message}")
    raise RuntimeError(f"rank {rank} failed: {message}")


def raise_if_any_failed(error: Exception | None) -> None:
    """Collective: every rank raises if any rank failed, so none waits forever on another.

    The failing rank re-raises its own exception; the others raise a UserError (or a
    RuntimeError for a non-user error) naming the first failed rank and its message.
    """
    failures = gather_objects(None if error is None else _describe(error))
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        if failure is not None:
            _raise_remote(rank, failure)


def on_rank_zero(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result (or raises its error).

    Doubles as a barrier: no rank returns before rank 0 has finished ``fn``.
    """
    rank, world_size = world_info()
    if world_size == 1:
        return fn()
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as caught:  # sent to the other ranks, then re-raised here
            error = caught
    message = [(result, None if error is None else _describe(error))]
    dist.broadcast_object_list(message, src=0)
    result, failure = message[0]
    if error is not None:
        raise error
    if failure is not None:
        _raise_remote(0, failure)
    return result


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a (small) tensor over ranks, detached: e.g. the global loss from per-rank shares."""
    total = x.detach().clone()
    if world_info()[1] > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda requested but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)
