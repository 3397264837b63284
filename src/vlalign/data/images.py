"""Image decoding that turns every kind of broken file into a BadItem with a reason."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from vlalign.data.base import BadItem

WHITE = (255, 255, 255)


def decode_image(data: bytes | str | os.PathLike[str]) -> Image.Image:
    """Fully decode bytes or a file to an RGB image (alpha over white), or raise BadItem."""
    return to_rgb(decode_any(data))


def decode_rgba(data: bytes | str | os.PathLike[str]) -> Image.Image:
    """Fully decode bytes or a file to RGBA, keeping transparency (for compositing)."""
    return decode_any(data).convert("RGBA")


def decode_any(data: bytes | str | os.PathLike[str]) -> Image.Image:
    """Read and fully decode an image in its own mode (masks keep palette indices); every
    failure becomes a BadItem."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw, where = bytes(data), "image bytes"
    else:
        path = Path(data)
        where = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise BadItem(f"missing image file: {where}") from None
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
            raise BadItem(f"unreadable image file {where!r}: {error}") from None
    if not raw:
        raise BadItem(f"empty (zero-byte) image: {where}")
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()  # force the full decode so truncated/corrupt data fails here, not later
    except Image.UnidentifiedImageError:
        raise BadItem(f"not an image (unrecognised format): {where}") from None
    except Exception as error:  # PIL plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        reason = f"{type(error).__name__}: {error}"
        raise BadItem(f"truncated or corrupt image {where}: {reason}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white rather than black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
