"""vlalign: align frozen vision and text encoders into CLIP-like models (SAIL, UTA)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlalign import _compat  # noqa: F401  (must run before anything imports torchvision)

if TYPE_CHECKING:
    from vlalign.models import (
        UTAModel,
        VLModel,
        create_model_and_transforms,
        get_tokenizer,
        load_model,
    )

__version__ = "0.1.0"
__all__ = ["UTAModel", "VLModel", "create_model_and_transforms", "get_tokenizer", "load_model"]


def __getattr__(name: str) -> Any:
    """The model API on first use (``vlalign.load_model``), so ``import vlalign`` stays light."""
    if name in __all__:
        return getattr(importlib.import_module("vlalign.models"), name)
    raise AttributeError(f"module 'vlalign' has no attribute {name!r}")
