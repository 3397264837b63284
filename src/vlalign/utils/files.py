"""Atomic file writes and checksums: a kill -9 never leaves a half-written file in place."""

from __future__ import annotations

import errno
import hashlib
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
    array = np.ascontiguousarray(array)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        npy_format.write_array_header_1_0(handle, npy_format.header_data_from_array_1_0(array))
        handle.write(array.data)
    return sha256_file(path)


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
