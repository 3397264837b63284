"""Opening models by name or path, open_clip-style: ``load_model``, ``create_model_and_transforms``
and ``get_tokenizer``.

Names: a run directory or saved model folder (SAIL heads, or a UTA student with its teacher's
text side); ``hf-hub:ORG/REPO``, a model folder on the Hugging Face Hub (resolved to a local
folder by ``vlalign.models.hub``); ``open_clip:...``, both towers of one CLIP by backbone spec,
no heads; ``random-heads:NAME``, NAME's backbones with freshly initialised heads (the control
every trained number is compared to).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlalign.errors import UserError
from vlalign.models.base import ImageTransform, TextBatch, Texts, tokenize
from vlalign.models.sail import VLModel
from vlalign.sail.artifact import AlignmentHeads

if TYPE_CHECKING:
    from vlalign.models.uta import UTAModel

JOINT_SPACE_SCHEMES = ("open_clip:",)
UNTRAINED = "random-heads:"
HUB = "hf-hub:"
# precision -> dtype of the trainable parts; amp keeps float32 weights (the caller autocasts)
PRECISIONS = {"fp32": torch.float32, "amp": torch.float32, "amp_bf16": torch.float32,
              "amp_bfloat16": torch.float32, "fp16": torch.float16, "pure_fp16": torch.float16,
              "bf16": torch.bfloat16, "pure_bf16": torch.bfloat16}
UTA_CONFIG = "uta.json"  # vlalign.uta.artifact.CONFIG: UTA code (and timm) load only for UTA


def _local(name: str | Path) -> Path:
    """A model folder on this machine: ``hf-hub:`` names are downloaded (or found cached)."""
    text = str(name)
    if text.startswith(HUB):
        from vlalign.models.hub import resolve_hub_model

        return Path(resolve_hub_model(text))
    return Path(name)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VLModel | UTAModel:
    """Load a model by path or name (see the module doc) onto ``device``: a ``VLModel`` (SAIL
    heads, or two towers of one CLIP) or a ``UTAModel``."""
    text = str(path)
    if text.startswith(JOINT_SPACE_SCHEMES):
        return VLModel.from_backbones(text, text, device=device)
    if text.startswith(UNTRAINED):
        trained = VLModel.from_pretrained(_local(text[len(UNTRAINED):]), device=device)
        heads = AlignmentHeads.untrained(trained.heads.config)
        scale = trained.logit_scale if trained.has_trained_logit_scale else None
        return VLModel(trained.vision, trained.text, heads, scale, trained.logit_bias).to(device)
    folder = _local(path)
    if (folder / UTA_CONFIG).exists():
        from vlalign.models.uta import UTAModel

        return UTAModel.from_pretrained(folder, device=device)
    return VLModel.from_pretrained(folder, device=device)


def create_model_and_transforms(name_or_path: str | Path, device: str | torch.device | None = None,
                                precision: str | None = None
                                ) -> tuple[VLModel | UTAModel, ImageTransform, ImageTransform]:
    """open_clip's ``create_model_and_transforms``: ``(model, preprocess_train, preprocess_val)``.

    ``device``: where the model goes (default CPU). ``precision``: the dtype of the trainable
    parts (heads or student, logit scale and bias): ``fp32`` (default), ``fp16`` / ``bf16``
    (also ``pure_fp16`` / ``pure_bf16``), or ``amp`` / ``amp_bf16`` (float32 weights, for a
    caller who autocasts); frozen backbones always stay float32. The two transforms are the same
    callable, PIL image -> 3 x S x S tensor equal to ``model.preprocess(image)``: vlalign trains
    on pre-encoded features and defines no augmentation, so the train transform is the eval one.
    """
    key = precision or "fp32"
    if key not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    model = load_model(name_or_path, device=device or "cpu").to(PRECISIONS[key])
    transform = ImageTransform(model.image_preprocess)
    return model, transform, transform


def get_tokenizer(name_or_path: str | Path) -> Callable[[Texts], TextBatch]:
    """open_clip's ``get_tokenizer``: a callable str | list[str] -> what ``model.encode_text``
    takes (a ``TextBatch`` of the strings: vlalign text towers tokenise inside ``encode_text``,
    so every model shares it and nothing is loaded). A local folder must exist."""
    text, schemes = str(name_or_path), (*JOINT_SPACE_SCHEMES, UNTRAINED, HUB)
    if not text.startswith(schemes) and not Path(text).is_dir():
        raise UserError(f"{text}: no such model folder (expected a run directory, a saved model, "
                        f"or a name starting with {', '.join(schemes)})")
    return tokenize
