"""``load_model``: any vlalign model folder, a CLIP by spec, or the random-heads control."""

from __future__ import annotations

from pathlib import Path

from vlalign.models.sail import VLModel
from vlalign.models.uta import UTAModel
from vlalign.sail.artifact import AlignmentHeads
from vlalign.uta.artifact import is_uta_model

JOINT_SPACE_SCHEMES = ("open_clip:",)
UNTRAINED = "random-heads:"


def load_model(path: str | Path, device: str = "cpu") -> VLModel | UTAModel:
    """Load a trained vlalign model (a run directory or a saved model folder: SAIL heads, or a
    UTA student with its teacher's text side); a CLIP by backbone spec (``open_clip:...``: both
    towers of one model, no heads); or ``random-heads:RUN``, RUN's backbones with freshly
    initialised heads (the control every trained number is compared to)."""
    text = str(path)
    if text.startswith(JOINT_SPACE_SCHEMES):
        return VLModel.from_backbones(text, text, device=device)
    if text.startswith(UNTRAINED):
        trained = VLModel.from_pretrained(text[len(UNTRAINED):], device=device)
        heads = AlignmentHeads.untrained(trained.heads.config)
        return VLModel(trained.vision, trained.text, heads).to(device)
    if is_uta_model(path):
        return UTAModel.from_pretrained(path, device=device)
    return VLModel.from_pretrained(path, device=device)
