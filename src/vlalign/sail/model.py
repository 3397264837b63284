"""The assembled SAIL model: frozen backbones + trained heads, CLIP-style interface.

``encode_image`` / ``encode_text`` / ``tokenizer`` follow open_clip's duck type, so
CLIP_benchmark-style code evaluates a vlalign model unchanged. Saved as safetensors + JSON;
loading never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.backbones.base import TextEncoder, VisionEncoder, VisionOutput, image_to_tensor
from vlalign.data.templates import format_prompt
from vlalign.errors import UserError
from vlalign.sail.heads import create_head
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json

CONFIG = "heads.json"
WEIGHTS = "heads.safetensors"


class TextBatch(list):
    """What ``tokenizer`` returns: the strings themselves, with a no-op ``.to(device)``."""

    def to(self, *args: Any, **kwargs: Any) -> TextBatch:
        return self


def _build_head(config: dict[str, Any]) -> nn.Module:
    spec = dict(config)
    return create_head(spec.pop("kind"), spec.pop("in_dim"), spec.pop("out_dim"), **spec)


def _load_head(config: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    head = _build_head(config)
    head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return head.eval()


def _device(module: nn.Module) -> torch.device:
    """Where a head's parameters live (CPU for parameter-free heads)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


class AlignmentHeads(nn.Module):
    """The trained part of a model: one head per modality mapping backbone features to the
    joint space. Enough to evaluate on a feature store without running any backbone."""

    def __init__(self, vision_head: nn.Module, text_head: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.vision_head, self.text_head, self.config = vision_head, text_head, config

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AlignmentHeads:
        """Load heads.json + heads.safetensors from a run directory or a saved model folder."""
        path = Path(path)
        if not (path / CONFIG).exists() or not (path / WEIGHTS).exists():
            raise UserError(f"{path} is not a vlalign model: expected {CONFIG} and {WEIGHTS} "
                            "(a finished `vlalign train` run or a `save_pretrained` folder)")
        config = read_json(path / CONFIG)
        tensors = load_tensors(path / WEIGHTS)
        return cls(_load_head(config["vision_head"], tensors, "vision_head."),
                   _load_head(config["text_head"], tensors, "text_head."), config)

    @classmethod
    def untrained(cls, config: dict[str, Any], seed: int = 0) -> AlignmentHeads:
        """Freshly initialised heads of the same shape: the random-heads evaluation control."""
        torch.manual_seed(seed)
        return cls(_build_head(config["vision_head"]).eval(),
                   _build_head(config["text_head"]).eval(), {**config, "untrained_seed": seed})

    def save_pretrained(self, path: str | Path) -> None:
        """Write heads.safetensors + heads.json (backbones are named by spec, not copied)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"vision_head.{k}": v for k, v in self.vision_head.state_dict().items()}
        tensors |= {f"text_head.{k}": v for k, v in self.text_head.state_dict().items()}
        atomic_write_bytes(path / WEIGHTS, save_tensors(tensors))
        atomic_write_json(path / CONFIG, self.config)

    @torch.inference_mode()
    def encode_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Vision head on backbone features (pooled B x D, or per token B x N x D)."""
        device = _device(self.vision_head)
        out = self.vision_head(features.to(device).float()).float()
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_text_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text head on backbone text features (B x D)."""
        device = _device(self.text_head)
        out = self.text_head(features.to(device).float()).float()
        return F.normalize(out, dim=-1) if normalize else out


class VLModel(nn.Module):
    """A CLIP-like model: frozen vision and text encoders followed by alignment heads."""

    def __init__(self, vision: VisionEncoder, text: TextEncoder, heads: AlignmentHeads):
        super().__init__()
        self.vision, self.text, self.heads = vision, text, heads

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> VLModel:
        """Load a training run directory or a saved model folder, rebuilding the backbones."""
        heads = AlignmentHeads.from_pretrained(path)
        config = heads.config
        vision = create_vision_encoder(config["vision"]["spec"], device=device)
        text = create_text_encoder(config["text"]["spec"], device=device)
        if vision.identity != config["vision"]["identity"]:
            raise UserError(f"{path}: vision backbone {config['vision']['spec']} now has identity "
                            f"{vision.identity}, but the heads were trained on "
                            f"{config['vision']['identity']}")
        return cls(vision, text, heads).to(device)

    @classmethod
    def from_backbones(cls, vision_spec: str, text_spec: str, device: str = "cpu") -> VLModel:
        """Two towers already in one joint space (e.g. an open_clip CLIP), with identity heads."""
        vision = create_vision_encoder(vision_spec, device=device)
        text = create_text_encoder(text_spec, device=device)
        if vision.dim != text.dim:
            raise UserError(f"{vision_spec} ({vision.dim}-d) and {text_spec} ({text.dim}-d) do not "
                            "share an embedding space; train heads with `vlalign train sail`")
        dim = vision.dim
        config = {"vision_head": {"kind": "identity", "in_dim": dim, "out_dim": dim},
                  "text_head": {"kind": "identity", "in_dim": dim, "out_dim": dim},
                  "vision": {"spec": vision_spec, "identity": vision.identity, "dim": dim},
                  "text": {"spec": text_spec, "identity": text.identity, "dim": dim}}
        heads = AlignmentHeads(_build_head(config["vision_head"]),
                               _build_head(config["text_head"]), config)
        return cls(vision, text, heads)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the heads and the JSON config naming the backbone specs."""
        self.heads.save_pretrained(path)

    # --- CLIP-style interface ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return _device(self.heads)

    def tokenizer(self, texts: str | list[str]) -> TextBatch:
        """Tokenizer-like callable: vlalign text backbones tokenise internally."""
        return TextBatch([texts] if isinstance(texts, str) else list(texts))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> 3 x H x W tensor as the vision backbone expects."""
        return image_to_tensor(image, self.vision.preprocess)

    def _pixels(self, images: torch.Tensor | list[Image.Image]) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        return torch.stack([self.preprocess(image) for image in images]).to(self.device)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor | list[Image.Image],
                     normalize: bool = False) -> torch.Tensor:
        """Images (preprocessed tensor B x 3 x H x W, or PIL images) -> B x d embeddings."""
        pooled = self.vision.encode(self._pixels(images)).pooled
        return self.heads.encode_image_features(pooled, normalize)

    @torch.inference_mode()
    def encode_text(self, texts: str | list[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> B x d embeddings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.heads.encode_text_features(self.text.encode(texts), normalize)

    @torch.inference_mode()
    def encode_image_tokens(self, images: torch.Tensor | list[Image.Image],
                            normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid."""
        out = self.vision.encode(self._pixels(images), tokens=True)
        return self.heads.encode_image_features(token_head_inputs(out), normalize), out.grid

    @torch.inference_mode()
    def classify(self, images: torch.Tensor | list[Image.Image], class_names: list[str],
                 templates: tuple[str, ...] | list[str] = ("a photo of a {}.",)) -> torch.Tensor:
        """Zero-shot class probabilities B x C with a prompt-template ensemble per class."""
        prompts = [format_prompt(t, c) for c in class_names for t in templates]
        classes = self.encode_text(prompts, normalize=True).view(len(class_names),
                                                                 len(templates), -1)
        classes = F.normalize(classes.mean(dim=1), dim=-1)  # C x d: template ensemble
        logits = 100 * self.encode_image(images, normalize=True) @ classes.T
        return logits.softmax(dim=-1)


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
