"""Spec string -> frozen encoder. Adapter modules are imported only when their scheme is used, so
``import vlalign.backbones`` stays cheap (transformers, timm and open_clip take seconds)."""

from __future__ import annotations

from vlalign.backbones import bundled
from vlalign.backbones.base import TextEncoder, VisionEncoder
from vlalign.backbones.spec import Spec, parse_spec
from vlalign.errors import UserError

VISION_SCHEMES = ("bundled", "hf", "timm", "open_clip")
TEXT_SCHEMES = ("bundled", "hf", "st", "open_clip")


def _bundled(spec: Spec, table: dict, role: str, device: str) -> object:
    if spec.name not in table:
        raise UserError(f"unknown bundled {role} model {spec.name!r}; valid: {', '.join(table)}")
    return table[spec.name](spec, device)


def create_vision_encoder(spec: str, device: str = "cpu") -> VisionEncoder:
    """Build the frozen image encoder a spec names (``bundled:mobilenetv2``, ``hf:<dir>``, ...)."""
    parsed = parse_spec(spec, VISION_SCHEMES)
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
    parsed = parse_spec(spec, TEXT_SCHEMES)
    if parsed.scheme == "bundled":
        return _bundled(parsed, bundled.TEXT, "text", device)
    if parsed.scheme == "hf":
        from vlalign.backbones.hf import HFTextEncoder

        return HFTextEncoder(parsed, device)
    if parsed.scheme == "st":
        from vlalign.backbones.st import load_st

        return load_st(parsed, device)
    from vlalign.backbones.open_clip_adapter import OpenCLIPText

    return OpenCLIPText(parsed, device)


def list_stages(spec: str) -> tuple[str, ...]:
    """Stage names a vision spec accepts after ``@`` (empty for encoders without stages)."""
    parsed = parse_spec(spec, VISION_SCHEMES)
    if parsed.scheme != "bundled":
        return ()
    return tuple(bundled.STAGES.get(parsed.name, ()))
