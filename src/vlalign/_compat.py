"""Make ``import torchvision`` work where its compiled extension cannot load.

The PyPI torchvision 0.28 wheel ships a ``_C`` extension linked against CUDA libraries. On a
CPU-only machine it fails to load, and torchvision's import then dies registering fake kernels
for ``torchvision::nms`` / ``torchvision::qnms`` ("operator torchvision::nms does not exist").
timm, open_clip and transformers all import torchvision, so we declare those two operator
schemas ourselves before torchvision is imported. Transforms, timm and open_clip then work;
``torchvision.ops`` and ``torchvision.io`` stay unusable (vlalign decodes images with PIL).
Where the extension loads (a normal GPU install) this module does nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def _extension_loads(package_dir: str) -> bool:
    for path in glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(
        os.path.join(package_dir, "_C*.pyd")
    ):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


def patch_torchvision() -> None:
    """Declare the missing torchvision operator schemas if (and only if) they are needed."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    if _extension_loads(os.path.dirname(spec.origin)):
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


patch_torchvision()
