"""Atomic file writes and checksums: a kill -9 never leaves a half-written file in place."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from vlalign.errors import DiskFullError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def cache_dir(kind: str) -> Path:
    """``$VLALIGN_CACHE/<kind>`` (default ``~/.cache/vlalign/<kind>``): exports and features
    that are recomputed, never lost, if deleted."""
    root = Path(os.environ.get("VLALIGN_CACHE", Path.home() / ".cache" / "vlalign"))
    return root / kind


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write; on success fsync it and rename it over ``path``.

    On any failure the temporary file is removed (a full disk gets its space back) and ``path``
    keeps its previous content; running out of space becomes a one-line DiskFullError.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            raise DiskFullError(f"no space left on the device writing {path}; free some space "
                                "and rerun the same command (with --resume for training)"
                                ) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write a JSON document atomically (pretty-printed, stable key order)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Save an array as .npy atomically and return the file's sha256.

    Always C order (the reader's layout). The bytes equal ``np.save``'s for a C-ordered array,
    but go through Python's ``write``: numpy's own writer reports a full disk as a short write
    without an errno, which could not be told apart from other errors.
    """
    return atomic_save_npy_parts(path, [array])


def atomic_save_npy_parts(path: Path, parts: list[np.ndarray]) -> str:
    """``atomic_save_npy`` of the rows of ``parts`` (same dtype and trailing shape) stacked,
    without stacking them: each part is written in turn and hashed as it goes, so a shard of
    token maps is neither copied into one array nor read back for its checksum."""
    parts = [np.ascontiguousarray(part) for part in parts]
    shape = (sum(len(part) for part in parts), *parts[0].shape[1:])
    header = {"descr": npy_format.dtype_to_descr(parts[0].dtype), "fortran_order": False,
              "shape": shape}
    head = io.BytesIO()
    npy_format.write_array_header_1_0(head, header)
    digest = hashlib.sha256(head.getvalue())
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(head.getvalue())
        for part in parts:
            if part.dtype != parts[0].dtype or part.shape[1:] != parts[0].shape[1:]:
                raise ValueError(f"{path}: parts of different dtypes or shapes")
            handle.write(part.data)
            digest.update(part.data)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
