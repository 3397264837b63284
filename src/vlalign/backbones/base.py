"""The two small protocols every frozen encoder implements, the text encoders' shared base, and
the shared pooling and identity helpers."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from vlalign.errors import UserError
from vlalign.spec import Spec, Value

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisionOutput:
    """What a vision encoder returns for a batch of images.

    pooled: B x D image vectors (for SAIL: ``[CLS ; mean(patch)]`` for ViTs, the pooled vector for
    CNNs). tokens: B x N x Dt per-position features on a ``grid`` of (rows, cols), N = rows*cols,
    or None when the encoder has no spatial map. cls: B x Dt for token models that have one.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    cls: torch.Tensor | None = None


@dataclass
class Preprocess:
    """How an encoder wants its pixels: square resize to ``size``, then (x/255 - mean) / std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, **self.extra}


@runtime_checkable
class VisionEncoder(Protocol):
    """Frozen image encoder: pixels (B x 3 x H x W, already preprocessed) -> VisionOutput."""

    identity: str  # stable string naming the architecture, weights and pooling
    dim: int  # pooled dimension
    token_dim: int  # per-token dimension (0 when the encoder has no token map)
    preprocess: Preprocess

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput: ...

    def to(self, device: torch.device | str) -> VisionEncoder: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Frozen text encoder: list of strings -> B x D float32 vectors (not normalised)."""

    identity: str
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor: ...


class BaseTextEncoder(ABC):
    """What every text adapter shares: the device, ``to()``, the empty-input guard and batching.

    A subclass sets ``identity``, ``dim``, ``batch_size`` if 256 does not suit, and ``model``
    when it has a torch module for ``to()`` to move, and implements ``_encode_batch``. Empty
    strings are encoded like any other string: each model decides what they mean.
    """

    identity: str
    dim: int
    batch_size: int = 256
    model: Any = None
    device: torch.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> BaseTextEncoder:
        """Move the model (if it is a torch module); outputs come back on the same device."""
        self.device = torch.device(device)
        if isinstance(self.model, torch.nn.Module):
            self.model.to(self.device)
        return self

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """B x dim float32 on the encoder's device, ``batch_size`` strings per model call; an
        ordinary tensor (not an inference one), so it can serve as an autograd target."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        with torch.inference_mode():
            out = torch.cat([self._encode_batch(texts[i:i + self.batch_size])
                             for i in range(0, len(texts), self.batch_size)])
        return out.to(self.device, torch.float32, copy=True)

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """len(texts) x dim embeddings of one batch (any float dtype and device)."""


_INTERPOLATION = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def image_to_tensor(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Convert one PIL image to a normalised 3 x size x size float tensor (square resize)."""
    image = image.convert("RGB")
    if image.size != (pre.size, pre.size):
        image = image.resize((pre.size, pre.size), _INTERPOLATION[pre.interpolation])
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = x.view(pre.size, pre.size, 3).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return (x - mean) / std


def pool_feature_map(fmap: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool a CNN map B x C x H x W: 'avg', 'max' or 'avgmax' (= [avg ; max], 2C dims)."""
    if mode == "avg":
        return fmap.mean(dim=(2, 3))
    if mode == "max":
        return fmap.amax(dim=(2, 3))
    if mode == "avgmax":
        return torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"unknown pooling {mode!r}; expected avg, max or avgmax")


def pool_vit_tokens(hidden: torch.Tensor, num_prefix: int = 1) -> VisionOutput:
    """SAIL pooling of a ViT's last hidden state B x (P + N) x D: ``[CLS ; mean(patches)]``."""
    cls = hidden[:, 0]
    patches = hidden[:, num_prefix:]
    side = int(round(patches.shape[1] ** 0.5))
    grid = (side, side) if side * side == patches.shape[1] else (1, patches.shape[1])
    pooled = torch.cat([cls, patches.mean(dim=1)], dim=1)
    return VisionOutput(pooled=pooled, tokens=patches, grid=grid, cls=cls)


def feature_map_to_tokens(fmap: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """B x C x H x W -> (B x HW x C, (H, W)), row-major like a ViT's patch order."""
    b, c, h, w = fmap.shape
    return fmap.flatten(2).transpose(1, 2).contiguous(), (h, w)


# --- helpers shared by the adapters -------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime): re-creating encoders is cheap."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def weights_tag(paths: Iterable[str | Path]) -> str:
    """Short stable name for a set of weight files: 'sha256:' + 12 hex digits over their digests."""
    digests = sorted(file_digest(p) for p in paths)
    if not digests:
        raise UserError("no weight files found to identify the model")
    return "sha256:" + hashlib.sha256("".join(digests).encode()).hexdigest()[:12]


def make_identity(spec: Spec, weights: str, options: Mapping[str, Value]) -> str:
    """Identity string: ``scheme:name[@stage]?k=v&...#weights``, options resolved, sorted and
    booleans written 1/0, so equal settings always give equal identities."""
    head = f"{spec.scheme}:{spec.name}" + (f"@{spec.stage}" if spec.stage else "")
    query = "&".join(f"{k}={int(v) if isinstance(v, bool) else v}"
                     for k, v in sorted(options.items()))
    return head + (f"?{query}" if query else "") + f"#{weights}"


def reject_stage(spec: Spec) -> None:
    """Stages (``@stageN``) exist only for the bundled CNNs; anything else is a UserError."""
    if spec.stage:
        raise UserError(f"spec {str(spec)!r}: '@{spec.stage}' stages exist only for bundled CNNs")


def released(out: VisionOutput) -> VisionOutput:
    """Copy inference-mode results to ordinary float32 tensors (usable later as loss targets)."""
    def copy(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.float32, copy=True)

    return VisionOutput(pooled=copy(out.pooled), tokens=copy(out.tokens), grid=out.grid,
                        cls=copy(out.cls))


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")
_SKIPPED_DIRS = {"onnx", "openvino", ".cache", ".git"}


def folder_weights_tag(folder: str | Path) -> str:
    """weights_tag over a model folder's weights, configs and vocabularies (ONNX etc. skipped)."""
    root = Path(folder)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
             and not _SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    if not files:
        raise UserError(f"no model files in {root}")
    return weights_tag(files)
