"""Small file helpers shared by the benchmark readers: locating roots, reading, fingerprints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vlalign.data.base import BadItem
from vlalign.data.images import decode_any
from vlalign.errors import DataError, UserError


def first_existing(candidates: list[Path]) -> Path | None:
    """The first candidate path that exists, or None."""
    return next((path for path in candidates if path.exists()), None)


def require_dir(root: str | os.PathLike[str], what: str) -> Path:
    """``root`` as a Path, or a UserError when it is not a directory."""
    path = Path(root)
    if not path.is_dir():
        raise UserError(f"{what} root not found (not a directory): {path}")
    return path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a UserError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def read_text(path: Path, data: bytes) -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text (a BOM is dropped), or a DataError."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start})") from None


class Fingerprint:
    """sha1 over a header, annotation bytes and ``relative:size:mtime_ns`` of each listed file."""

    def __init__(self, header: str) -> None:
        self.digest = hashlib.sha1(header.encode() + b"\n")

    def add_bytes(self, data: bytes) -> None:
        """Mix in an annotation file's full content (length-prefixed)."""
        self.digest.update(f"{len(data)}\n".encode() + data + b"\n")

    def add_file(self, path: Path, relative: str) -> bool:
        """Mix in a file's relative path, size and mtime; False (recorded too) if it is missing."""
        try:
            stat = path.stat()
        except OSError:
            self.digest.update(f"{relative}:missing\n".encode())
            return False
        self.digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return True

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def read_mask(path: Path, valid_max: int, size: tuple[int, int]) -> np.ndarray:
    """A class-index PNG (mode P or L) as an int64 H x W array; BadItem if unusable.

    Palette PNGs are read as their indices (no palette conversion). Values must be 0..valid_max
    or 255, and the mask must have the image's ``size`` (width, height).
    """
    image = decode_any(path)
    if image.mode not in ("P", "L"):
        raise BadItem(f"mask {path} has mode {image.mode}, expected a palette (P) or "
                      f"grayscale (L) PNG of class indices")
    if image.size != size:
        raise BadItem(f"mask {path} is {image.size[0]}x{image.size[1]} but its image is "
                      f"{size[0]}x{size[1]}")
    mask = np.asarray(image, dtype=np.int64)
    bad = (mask > valid_max) & (mask != 255)
    if bad.any():
        raise BadItem(f"mask {path} has class index {int(mask[bad][0])} "
                      f"(expected 0..{valid_max} or 255)")
    return mask
