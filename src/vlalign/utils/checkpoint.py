"""Training checkpoints: safetensors + JSON, written atomically, never unpickled.

A checkpoint is ``ckpt-{step:08d}.safetensors`` (tensors: weights, optimiser moments, RNG) plus
``ckpt-{step:08d}.json`` (step, config, optimiser hyper-parameters, sha256 of the tensor file).
``latest.json`` names the newest complete one and is replaced last, so a kill at any moment
leaves either the previous checkpoint or the new one, never a half-written file that resume uses.
Tensor files are read with safetensors only: a file crafted to run code when unpickled is
refused with a StoreError, never executed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vlalign.errors import StoreError
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json, sha256_file

LATEST = "latest.json"


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      extra: dict) -> None:
    """Inverse of ``flatten_optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in extra["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor],
                    info: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, point latest.json at it, prune older ones.

    The tensors are serialised in memory first (one transient copy) so that every byte goes
    through ``atomic_write_bytes``: a full disk is a DiskFullError and leaves no partial file.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt-{step:08d}"
    weights = run_dir / f"{stem}.safetensors"
    data = save_tensors(tensors)
    atomic_write_bytes(weights, data)
    atomic_write_json(run_dir / f"{stem}.json",
                      {**info, "step": step, "tensors": weights.name,
                       "sha256": hashlib.sha256(data).hexdigest()})  # of what was written
    atomic_write_json(run_dir / LATEST, {"step": step, "checkpoint": f"{stem}.json"})
    for old in sorted(run_dir.glob("ckpt-*.json"))[:-keep]:  # tensors first: no orphans
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return weights


def save_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors serialisation of CPU copies of ``tensors``."""
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (e.g. a pickle) is a StoreError, never unpickled."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise StoreError(f"{path}: not a readable safetensors file ({error}); refusing to load "
                         "it") from None


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Tensors and info of the newest complete checkpoint, or None if there is none."""
    pointer = run_dir / LATEST
    if not pointer.exists():
        return None
    try:
        info = read_json(run_dir / read_json(pointer)["checkpoint"])
        weights = run_dir / info["tensors"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{run_dir}: unreadable checkpoint record ({error}); delete {run_dir} "
                         "to start over") from None
    if not weights.exists() or sha256_file(weights) != info["sha256"]:
        raise StoreError(f"{weights}: checkpoint missing or its checksum does not match "
                         f"{LATEST}; delete {run_dir} to start over")
    return load_tensors(weights), info
