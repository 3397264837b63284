"""Spec strings that name backbones, parsed in one place (datasets have their own, simpler form).

Grammar: ``scheme:name[@stage][?key=value&key=value]``, for example ``bundled:mobilenetv2``,
``bundled:mobilenetv2@stage4``, ``hf:/models/dinov2-small?pool=cls``,
``timm:vit_small_patch16_224``, ``open_clip:ViT-B-32/laion2b_s34b_b79k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from vlalign.errors import UserError


@dataclass(frozen=True)
class Spec:
    scheme: str
    name: str
    stage: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text


def parse_spec(text: str, schemes: tuple[str, ...]) -> Spec:
    """Split a spec string; an unknown scheme or an empty name is a UserError listing valid ones."""
    if not isinstance(text, str) or ":" not in text:
        raise UserError(f"bad spec {text!r}: expected SCHEME:NAME with SCHEME one of "
                        f"{', '.join(schemes)}")
    scheme, rest = text.split(":", 1)
    if scheme not in schemes:
        raise UserError(f"unknown scheme {scheme!r} in spec {text!r}; valid: {', '.join(schemes)}")
    rest, _, query = rest.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise UserError(
            f"bad options {query!r} in spec {text!r}: expected key=value&key=value") from None
    name, _, stage = rest.partition("@")
    if not name:
        raise UserError(f"empty name in spec {text!r}")
    return Spec(scheme=scheme, name=name, stage=stage or None, options=options, text=text)
