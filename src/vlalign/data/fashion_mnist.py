"""Fashion-MNIST from its IDX .gz files (Debian dataset-fashion-mnist), decoded once per process."""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from vlalign.data.base import RAW, REWRITTEN, Example
from vlalign.data.templates import FASHION_TEMPLATES, class_captions
from vlalign.errors import DataError, UserError

CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = {"train": "train-{}-ubyte.gz", "test": "t10k-{}-ubyte.gz"}
_IDX_DTYPE = {0x08: np.uint8}

# (path, size, mtime) -> decoded array; shared by every source object in this process.
_ARRAYS: dict[tuple[str, int, int], np.ndarray] = {}


def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX(.gz) file into a numpy array, cached per process by path, size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _ARRAYS:
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError) as error:
            raise DataError(f"cannot read IDX file {path}: {error}") from None
        if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPE:
            raise DataError(f"{path} is not an unsigned-byte IDX file")
        ndim = raw[3]
        shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", ndim, 4))
        data = np.frombuffer(raw, _IDX_DTYPE[raw[2]], offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise DataError(f"{path}: IDX header says {shape} but holds {data.size} values")
        _ARRAYS[key] = data.reshape(shape)
    return _ARRAYS[key]


class FashionMNIST:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grayscale items) as RGB images and labels."""

    class_names = CLASS_NAMES

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        if split not in FILES:
            raise UserError(f"unknown Fashion-MNIST split {split!r}; valid: {', '.join(FILES)}")
        self.root = Path(root)
        self.split = split
        self.name = f"fashion-mnist:{split}"
        self.image_path = self.root / FILES[split].format("images-idx3")
        self.label_path = self.root / FILES[split].format("labels-idx1")
        for path in (self.image_path, self.label_path):
            if not path.is_file():
                raise UserError(f"Fashion-MNIST file not found: {path} (run `make install`)")
        self._length = len(self.labels)
        if self.images.shape[0] != self._length:
            raise DataError(f"{self.image_path} and {self.label_path} disagree on the item count")

    @property
    def images(self) -> np.ndarray:
        """N x 28 x 28 uint8 pixels (decoded on first use in each process)."""
        return read_idx(self.image_path)

    @property
    def labels(self) -> np.ndarray:
        """N uint8 class indices."""
        return read_idx(self.label_path)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-1 of both compressed files' content and the split."""
        digest = hashlib.sha1(self.name.encode())
        for path in (self.image_path, self.label_path):
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return self._length

    def load(self, index: int) -> Example:
        """Item ``index`` as an RGB image with label and two class-name captions."""
        label = int(self.labels[index])
        image = Image.fromarray(self.images[index]).convert("RGB")
        raw, rewritten = class_captions(FASHION_TEMPLATES, CLASS_NAMES[label], index)
        return Example(key=f"{self.split}/{index:05d}", image=image,
                       captions={RAW: raw, REWRITTEN: rewritten}, label=label)
