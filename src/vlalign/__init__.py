"""vlalign: align frozen vision and text encoders into CLIP-like models (SAIL, UTA)."""

from vlalign import _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
