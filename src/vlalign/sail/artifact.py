"""The trained SAIL artefact: alignment heads with the record of what they were trained on.

A SAIL model on disk is ``heads.json`` (``HeadsConfig``: head specs, training facts, the backbone
specs and identities) + ``heads.safetensors`` (``vision_head.*``, ``text_head.*``, and from
training the loss's ``loss.*`` scale and bias). The backbones are named by spec, never copied;
``load_backbones`` rebuilds them and refuses one whose weights changed. Loading never unpickles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.backbones.base import TextEncoder, VisionEncoder, VisionOutput
from vlalign.errors import UserError
from vlalign.sail.heads import create_head
from vlalign.store.layout import transform_difference
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

CONFIG = "heads.json"
WEIGHTS = "heads.safetensors"
HeadSpec = dict[str, Any]  # kind, in_dim, out_dim and the kind's options: create_head's arguments


@dataclass(frozen=True)
class BackboneRecord:
    """Which frozen encoder a head was trained on: its spec, weights identity and output dim."""

    spec: str
    identity: str
    dim: int
    preprocess: dict[str, Any] | None = None  # the store's record of the vision preprocessing

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> BackboneRecord:
        """From heads.json or a store manifest (other keys are not part of the record)."""
        return cls(record["spec"], record["identity"], record["dim"], record.get("preprocess"))

    def to_dict(self) -> dict[str, Any]:
        record = {"spec": self.spec, "identity": self.identity, "dim": self.dim}
        return record if self.preprocess is None else {**record, "preprocess": self.preprocess}


@dataclass(frozen=True)
class HeadsConfig:
    """What heads.json holds; optional facts left as None are not written."""

    vision_head: HeadSpec
    text_head: HeadSpec
    vision: BackboneRecord
    text: BackboneRecord
    method: str | None = "sail"
    step: int | None = None
    embed_dim: int | None = None
    loss: str | None = None
    untrained_seed: int | None = None  # set on the random-heads control
    positives: list[str] | None = None  # caption kinds trained on (SAIL: raw, rewritten)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> HeadsConfig:
        """Parse heads.json (keys it does not know are ignored)."""
        return cls(vision_head=dict(config["vision_head"]), text_head=dict(config["text_head"]),
                   vision=BackboneRecord.from_dict(config["vision"]),
                   text=BackboneRecord.from_dict(config["text"]),
                   method=config.get("method"), step=config.get("step"),
                   embed_dim=config.get("embed_dim"), loss=config.get("loss"),
                   untrained_seed=config.get("untrained_seed"),
                   positives=config.get("positives"))

    def to_dict(self) -> dict[str, Any]:
        """heads.json's layout."""
        config = {"method": self.method, "step": self.step, "embed_dim": self.embed_dim,
                  "vision_head": self.vision_head, "text_head": self.text_head, "loss": self.loss,
                  "vision": self.vision.to_dict(), "text": self.text.to_dict(),
                  "untrained_seed": self.untrained_seed, "positives": self.positives}
        return {k: v for k, v in config.items() if v is not None}


def build_head(spec: HeadSpec) -> nn.Module:
    """A freshly initialised head from its spec."""
    options = dict(spec)
    return create_head(options.pop("kind"), options.pop("in_dim"), options.pop("out_dim"),
                       **options)


def _load_head(spec: HeadSpec, tensors: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    head = build_head(spec)
    head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return head.eval()


def _device(module: nn.Module) -> torch.device:
    """Where a module's parameters live (CPU for parameter-free ones)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's parameters (float32 for parameter-free ones)."""
    return next((p.dtype for p in module.parameters()), torch.float32)


class AlignmentHeads(nn.Module):
    """The trained part of a model: one head per modality mapping backbone features to the
    joint space. Enough to evaluate on a feature store without running any backbone."""

    def __init__(self, vision_head: nn.Module, text_head: nn.Module, config: HeadsConfig):
        super().__init__()
        self.vision_head, self.text_head, self.config = vision_head, text_head, config

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AlignmentHeads:
        """Load heads.json + heads.safetensors from a run directory or a saved model folder."""
        path = Path(path)
        if not (path / CONFIG).exists() or not (path / WEIGHTS).exists():
            raise UserError(f"{path} is not a vlalign model: expected {CONFIG} and {WEIGHTS} "
                            "(a finished `vlalign train` run or a `save_pretrained` folder)")
        config = HeadsConfig.from_dict(read_json(path / CONFIG))
        tensors = load_tensors(path / WEIGHTS)
        return cls(_load_head(config.vision_head, tensors, "vision_head."),
                   _load_head(config.text_head, tensors, "text_head."), config)

    @classmethod
    def from_config(cls, config: HeadsConfig) -> AlignmentHeads:
        """Freshly initialised heads (eval mode) of the shapes ``config`` names."""
        return cls(build_head(config.vision_head).eval(), build_head(config.text_head).eval(),
                   config)

    @classmethod
    def untrained(cls, config: HeadsConfig, seed: int = 0) -> AlignmentHeads:
        """Freshly initialised heads of the same shape: the random-heads evaluation control."""
        torch.manual_seed(seed)
        return cls.from_config(replace(config, untrained_seed=seed))

    def save_pretrained(self, path: str | Path,
                        extra: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write heads.safetensors (plus ``extra`` tensors, e.g. the loss's ``loss.*``) and
        heads.json; backbones are named by spec, not copied."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"vision_head.{k}": v for k, v in self.vision_head.state_dict().items()}
        tensors |= {f"text_head.{k}": v for k, v in self.text_head.state_dict().items()}
        atomic_write_bytes(path / WEIGHTS, save_tensors(tensors | dict(extra or {})))
        atomic_write_json(path / CONFIG, self.config.to_dict())

    @property
    def device(self) -> torch.device:
        """Where the heads run (CPU for parameter-free heads)."""
        return _device(self)

    @torch.inference_mode()
    def encode_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Vision head on backbone features (pooled B x D, or per token B x N x D)."""
        head = self.vision_head  # features in the head's own dtype (a model cast to bf16)
        out = head(features.to(_device(head), _dtype(head))).float()
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_text_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text head on backbone text features (B x D)."""
        head = self.text_head
        out = head(features.to(_device(head), _dtype(head))).float()
        return F.normalize(out, dim=-1) if normalize else out


def load_vision_backbone(config: HeadsConfig, device: str = "cpu",
                         where: str | Path = "") -> VisionEncoder:
    """The frozen vision encoder the heads were trained on, rebuilt by spec; a UserError (naming
    ``where``) when its weights are no longer the ones trained on."""
    vision = create_vision_encoder(config.vision.spec, device=device)
    if vision.identity != config.vision.identity:
        raise UserError(f"{where}: vision backbone {config.vision.spec} now has identity "
                        f"{vision.identity}, but the heads were trained on "
                        f"{config.vision.identity}")
    difference = config.vision.preprocess and transform_difference(
        config.vision.preprocess, vision.preprocess.to_dict(), ("trained", "current"))
    if difference:  # still usable, but its features are not the ones the heads learned from
        log.warning("%s: the heads were trained on features of another image transform (%s); "
                    "retrain them for the best numbers", where or config.vision.spec, difference)
    return vision


def load_backbones(config: HeadsConfig, device: str = "cpu",
                   where: str | Path = "") -> tuple[VisionEncoder, TextEncoder]:
    """The frozen encoders the heads were trained on, rebuilt by spec (see
    ``load_vision_backbone``)."""
    vision = load_vision_backbone(config, device, where)
    return vision, create_text_encoder(config.text.spec, device=device)


def token_head_inputs(out: VisionOutput) -> torch.Tensor:
    """Per-token inputs of the pooled head: ``[CLS ; patch]`` for ViTs, the token for CNNs."""
    if out.tokens is None:
        raise UserError("this vision backbone has no token map; dense embeddings need one")
    if out.cls is not None and out.pooled.shape[-1] == 2 * out.tokens.shape[-1]:
        cls = out.cls[:, None, :].expand_as(out.tokens)
        return torch.cat([cls, out.tokens], dim=-1)
    if out.pooled.shape[-1] == out.tokens.shape[-1]:
        return out.tokens
    raise UserError(f"cannot map tokens of dim {out.tokens.shape[-1]} to the head's input dim "
                    f"{out.pooled.shape[-1]}")
