"""Classification images laid out as root/<class name>/<image>, classes in sorted order."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vlalign.data.base import RAW, REWRITTEN, Example
from vlalign.data.images import decode_image
from vlalign.data.templates import GENERIC_TEMPLATES, class_captions
from vlalign.errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageFolder:
    """Every image file inside a class folder; folder names (``_`` -> space) name classes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root}")
        folders = sorted(p for p in self.root.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
        self.items: list[tuple[str, int]] = []
        digest = hashlib.sha1(b"folder\n")
        for label, folder in enumerate(folders):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    relative = f"{folder.name}/{entry.name}"
                    self.items.append((relative, label))
                    stat = entry.stat()
                    digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        if not self.items:
            suffixes = ", ".join(IMAGE_SUFFIXES)
            raise DataError(f"no images found in {self.root} (expected "
                            f"{self.root}/<class>/<image> with suffixes {suffixes})")
        self.class_names = [folder.name.replace("_", " ") for folder in folders]
        self.name = f"folder:{self.root}"
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Example:
        """Image ``index`` with its class label and two class-name captions."""
        relative, label = self.items[index]
        raw, rewritten = class_captions(GENERIC_TEMPLATES, self.class_names[label], index)
        return Example(key=relative, image=decode_image(self.root / relative),
                       captions={RAW: raw, REWRITTEN: rewritten}, label=label)
