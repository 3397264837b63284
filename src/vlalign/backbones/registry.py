"""Spec string -> frozen encoder. Adapter modules are imported only when their scheme is used, so
``import vlalign.backbones`` stays cheap (transformers, timm and open_clip take seconds)."""

from __future__ import annotations

from vlalign.backbones import bundled
from vlalign.backbones.base import TextEncoder, VisionEncoder
from vlalign.errors import UserError
from vlalign.spec import Grammar, Spec

VISION_SCHEMES = ("bundled", "hf", "timm", "open_clip")
TEXT_SCHEMES = ("bundled", "hf", "st", "open_clip")
# ``scheme:name[@stage][?key=value&...]``; a trailing [a:b] is part of the name (a folder's).
VISION = Grammar("scheme", VISION_SCHEMES, stage=True, options=True)
TEXT = Grammar("scheme", TEXT_SCHEMES, stage=True, options=True)


def _bundled(spec: Spec, table: dict, role: str, device: str) -> object:
    if spec.name not in table:
        raise UserError(f"unknown bundled {role} model {spec.name!r}; valid: {', '.join(table)}")
    return table[spec.name](spec, device)


def create_vision_encoder(spec: str, device: str = "cpu") -> VisionEncoder:
    """Build the frozen image encoder a spec names (``bundled:mobilenetv2``, ``hf:<dir>``, ...)."""
    parsed = VISION.parse(spec)
    if parsed.scheme == "bundled":
        return _bundled(parsed, bundled.VISION, "vision", device)
    if parsed.scheme == "hf":
        from vlalign.backbones.hf import HFVisionEncoder

        return HFVisionEncoder(parsed, device)
    if parsed.scheme == "timm":
        from vlalign.backbones.timm_adapter import TimmVisionEncoder

        return TimmVisionEncoder(parsed, device)
    from vlalign.backbones.open_clip_adapter import OpenCLIPVision

    return OpenCLIPVision(parsed, device)


def create_text_encoder(spec: str, device: str = "cpu") -> TextEncoder:
    """Build the frozen text encoder a spec names (``bundled:minilm``, ``st:<dir>``, ...)."""
    parsed = TEXT.parse(spec)
    if parsed.scheme == "bundled":
        return _bundled(parsed, bundled.TEXT, "text", device)
    if parsed.scheme == "hf":
        from vlalign.backbones.hf import HFTextEncoder

        return HFTextEncoder(parsed, device)
    if parsed.scheme == "st":
        from vlalign.backbones.st import load_st

        return load_st(parsed, device)
    from vlalign.backbones.open_clip_adapter import OpenCLIPText

    return OpenCLIPText.from_spec(parsed, device)


def list_stages(spec: str) -> tuple[str, ...]:
    """Stage names a vision spec accepts after ``@`` (empty for encoders without stages)."""
    parsed = VISION.parse(spec)
    if parsed.scheme != "bundled":
        return ()
    return tuple(bundled.STAGES.get(parsed.name, ()))
