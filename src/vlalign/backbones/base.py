"""The two small protocols every frozen encoder implements, the text encoders' shared base, each
encoder's pixel recipe (``Preprocess``) and the functions that apply it, and the shared pooling
and identity helpers."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from vlalign.errors import UserError
from vlalign.spec import Spec, Value

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's (EVA-CLIP and UTA use it too)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


RESIZE_MODES = ("shortest", "squash")
CROP_ROUNDINGS = ("round", "floor")
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
_RECIPE_KEYS = ("size", "resize", "resize_size", "crop", "crop_rounding", "interpolation",
                "mean", "std", "rescale")


@dataclass
class Preprocess:
    """How an encoder wants its pixels: the steps of its own library's eval transform.

    1. RGB; 2. resize with PIL's ``interpolation`` filter (antialiased, as every library's PIL
    path does): ``resize="shortest"`` scales the shorter edge to the int ``resize_size`` keeping
    the aspect ratio (the longer edge ``int(S * long / short)``, as torchvision and transformers
    compute it), ``"squash"`` resizes to ``resize_size`` = (height, width); 3. centre crop to
    ``crop`` x ``crop`` (zero padding where the image is smaller), the offset rounded like
    torchvision (``"round"``: timm, open_clip, torchvision) or transformers (``"floor"``);
    4. ``(x * rescale - mean) / std``. ``size`` is the side of the square the encoder receives:
    ``crop`` when there is one, else the squash size. The defaults (squash to size x size, no
    crop) are what vlalign did before it followed each library. ``to_uint8`` runs steps 1-3,
    ``normalise`` step 4; ``image_to_tensor`` both.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: str = "squash"
    resize_size: int | tuple[int, int] | None = None  # None: size (x size)
    crop: int | None = None
    crop_rounding: str = "round"
    rescale: float = 1 / 255

    def __post_init__(self) -> None:
        self.size = int(self.size)
        self.mean, self.std = _triple(self.mean, "mean"), _triple(self.std, "std")
        if self.resize not in RESIZE_MODES:
            raise UserError(f"unknown resize mode {self.resize!r}; valid: "
                            f"{', '.join(RESIZE_MODES)}")
        if self.interpolation not in RESAMPLE:
            raise UserError(f"unknown interpolation {self.interpolation!r}; valid: "
                            f"{', '.join(RESAMPLE)}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise UserError(f"unknown crop rounding {self.crop_rounding!r}; valid: "
                            f"{', '.join(CROP_ROUNDINGS)}")
        if self.resize_size is None:
            self.resize_size = self.size if self.resize == "shortest" else (self.size, self.size)
        if self.resize == "squash":
            side = self.resize_size
            self.resize_size = (int(side), int(side)) if isinstance(side, (int, float)) else (
                int(side[0]), int(side[1]))
        else:
            self.resize_size = int(self.resize_size)
        self.crop = None if self.crop is None else int(self.crop)
        square = self.resize == "squash" and self.resize_size == (self.size, self.size)
        if self.crop not in (None, self.size) or (self.crop is None and not square):
            raise UserError(f"preprocessing {self.summary()} does not give {self.size} x "
                            f"{self.size} pixels; the crop must be the input size")
        self.rescale = float(self.rescale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``Preprocess.from_dict`` reads it back (and older size/mean/std records)."""
        side = self.resize_size
        return {"size": self.size, "resize": self.resize,
                "resize_size": list(side) if isinstance(side, tuple) else side,
                "crop": self.crop, "crop_rounding": self.crop_rounding,
                "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std), "rescale": self.rescale}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Preprocess:
        """From ``to_dict``; a record from before resize/crop were kept is the square resize
        vlalign applied then."""
        return cls(**{k: record[k] for k in _RECIPE_KEYS if k in record})

    def with_size(self, side: int) -> Preprocess:
        """The same recipe for a ``side`` x ``side`` input: the resize scales by side/size
        (floored), so the crop keeps its share of the image (256 -> 224 becomes 512 -> 448)."""
        side = int(side)
        if side == self.size:
            return self
        if self.resize == "shortest":
            resize_size: int | tuple[int, int] = self.resize_size * side // self.size
        else:
            resize_size = tuple(s * side // self.size for s in self.resize_size)
        return replace(self, size=side, resize_size=resize_size,
                       crop=None if self.crop is None else side)

    def whole_image(self) -> Preprocess:
        """The same pixels without a crop: the whole image squashed to size x size, for token
        maps that must cover it (dense tasks)."""
        return replace(self, resize="squash", resize_size=(self.size, self.size), crop=None)

    def summary(self) -> str:
        """One line for messages, e.g. 'shortest edge 256, crop 224, bicubic'."""
        side = self.resize_size
        resize = (f"shortest edge {side}" if self.resize == "shortest"
                  else f"squash {side[0]}x{side[1]}")
        crop = f", crop {self.crop} ({self.crop_rounding})" if self.crop else ""
        return f"{resize}{crop}, {self.interpolation}"


def _triple(values: Any, what: str) -> tuple[float, float, float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values] * 3)]
    if len(values) != 3:
        raise UserError(f"{what} must have 3 values (RGB), got {values}")
    return values[0], values[1], values[2]


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


def resized_size(width: int, height: int, pre: Preprocess) -> tuple[int, int]:
    """(width, height) of an image after ``pre``'s resize step."""
    if pre.resize == "squash":
        return pre.resize_size[1], pre.resize_size[0]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(pre.resize_size * long / short)  # torchvision's and transformers' rounding
    return (pre.resize_size, new_long) if width <= height else (new_long, pre.resize_size)


def crop_offset(length: int, crop: int, rounding: str) -> int:
    """Where a centre crop of ``crop`` starts along an edge of ``length`` (negative: padding)."""
    if rounding == "floor":  # transformers: (n - c) // 2, padding ceil((c - n) / 2) first
        return (length - crop) // 2
    if crop > length:  # torchvision pads floor((c - n) / 2) first
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))  # torchvision: round half to even


def to_uint8(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """One PIL image -> 3 x size x size uint8 (RGB, resized, centre-cropped; not normalised).

    A channels-first view of the pixels' row-major memory, as the loader can ship it."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = resized_size(image.width, image.height, pre)
    if image.size != size:
        image = image.resize(size, RESAMPLE[pre.interpolation])
    if pre.crop is not None:
        left = crop_offset(image.width, pre.crop, pre.crop_rounding)
        top = crop_offset(image.height, pre.crop, pre.crop_rounding)
        if (left, top) != (0, 0) or image.size != (pre.crop, pre.crop):
            # PIL fills what lies outside the image with 0, like both libraries' padding
            image = image.crop((left, top, left + pre.crop, top + pre.crop))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return x.view(pre.size, pre.size, 3).permute(2, 0, 1)


def normalise(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 pixels (3 x H x W or B x 3 x H x W, on any device) -> float32
    ``(x * rescale - mean) / std``, in torchvision's order of operations (ToTensor's x / 255,
    then Normalize), so it is bit-exact with the timm and open_clip transforms."""
    x = pixels.to(torch.float32, copy=True)
    x = x.div_(255.0) if pre.rescale == 1 / 255 else x.mul_(pre.rescale)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def image_to_tensor(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """One PIL image -> the normalised 3 x size x size float tensor the encoder takes."""
    return normalise(to_uint8(image, pre), pre)


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
