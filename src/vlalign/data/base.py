"""The data interface: every source yields examples (image, captions, label) by index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

# Caption kinds: SAIL's two positives per image. Sources with one caption use RAW only.
RAW = "raw"
REWRITTEN = "rewritten"


class BadItem(Exception):
    """One item is unusable (corrupt/missing image, empty caption): skip it, count it, log it."""


@dataclass
class Example:
    """One decoded item. ``captions`` maps a kind (RAW, REWRITTEN, ...) to its text."""

    key: str
    image: Image.Image
    captions: dict[str, str] = field(default_factory=dict)
    label: int | None = None


@runtime_checkable
class Source(Protocol):
    """A finite, indexable collection of examples.

    ``load(i)`` returns the decoded example or raises BadItem. ``fingerprint`` changes whenever
    the content would (file sizes/mtimes or a content hash), so a store can refuse to mix data.
    ``class_names`` is set for labelled sources (None otherwise).
    """

    name: str
    fingerprint: str
    class_names: list[str] | None

    def __len__(self) -> int: ...

    def load(self, index: int) -> Example: ...
