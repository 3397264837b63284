"""The CLIP-like interface every vlalign model offers (open_clip's duck type), so
CLIP_benchmark-style code, the evaluation suite and `vlalign classify` use any of them unchanged.

A model says how to embed one batch of pixels, of strings and of patches, which frozen encoders
it carries, and how its pixels are prepared; the rest is shared here: the tokenizer, PIL or tensor
inputs, batching (``batch_size`` items per forward, PIL images converted chunk by chunk),
``forward`` with open_clip's outputs, ``.to()`` moving the frozen encoders with the parameters,
and zero-shot classification.

Gradients: ``encode_image``, ``encode_text`` and ``forward`` follow the caller's grad mode, as
open_clip's do: under ``torch.no_grad()`` (what evaluation should use) they build no graph; in grad
mode gradients reach the trainable parts (SAIL heads, a UTA student, ``logit_scale`` /
``logit_bias``). Frozen backbones always run without grad inside, so their outputs carry none.
``classify`` and ``encode_image_tokens`` never build a graph.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlalign.backbones.base import Preprocess, image_to_tensor
from vlalign.data.templates import format_prompt
from vlalign.errors import UserError

Images = torch.Tensor | Sequence[Image.Image] | Image.Image  # B x 3 x H x W, or PIL images
Texts = str | Sequence[str]
BATCH_SIZE = 256  # items per forward in encode_image / encode_text / classify
DEFAULT_LOGIT_SCALE = 100.0  # models that trained none: CLIP's trained (clamped) value


class TextBatch(list):
    """What ``tokenizer`` returns: the strings themselves, with a no-op ``.to(device)``."""

    def to(self, *args: Any, **kwargs: Any) -> TextBatch:
        return self


def tokenize(texts: Texts) -> TextBatch:
    """The tokenizer of every vlalign model: vlalign text towers tokenise inside
    ``encode_text``, so this only wraps one string or several in a ``TextBatch``."""
    if isinstance(texts, torch.Tensor):
        raise UserError("vlalign models take strings, not token ids: pass the texts themselves "
                        "(or vlalign.get_tokenizer(name)(texts))")
    return TextBatch([texts] if isinstance(texts, str) else list(texts))


@dataclass(frozen=True)
class ImageTransform:
    """open_clip's ``preprocess`` callable: one PIL image -> the 3 x S x S float tensor the image
    tower takes, by the model's recipe (resize, centre crop, normalisation; no augmentation)."""

    recipe: Preprocess

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(image, self.recipe)


def move_encoder(encoder: Any, device: torch.device) -> None:
    """Move a frozen encoder or teacher (not an ``nn.Module`` of the model) to ``device``: by its
    ``to`` when it has one, else its parts (``model``, ``vision``, ``text``, ``heads``)."""
    if callable(getattr(encoder, "to", None)):
        encoder.to(device)
        return
    for name in ("model", "vision", "text", "heads"):
        part = getattr(encoder, name, None)
        if part is not None:
            move_encoder(part, device)
    if isinstance(getattr(encoder, "device", None), torch.device):
        encoder.device = device


def joint_space_logits(encoder: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(log scale, bias) of a CLIP an encoder wraps (an open_clip model's ``logit_scale`` and,
    for SigLIP, ``logit_bias``); (None, None) when it has none."""
    model = getattr(encoder, "model", None)
    scale, bias = getattr(model, "logit_scale", None), getattr(model, "logit_bias", None)
    if not isinstance(scale, torch.Tensor):
        return None, None
    return scale.detach().float().reshape(()), (
        bias.detach().float().reshape(()) if isinstance(bias, torch.Tensor) else None)


def _scalar_parameter(value: torch.Tensor | float, device: torch.device) -> nn.Parameter:
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().reshape(())
    return nn.Parameter(tensor.clone().to(device))


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class CLIPLikeModel(nn.Module, ABC):
    """An image tower and a text tower into one joint space, with open_clip's methods.

    ``logit_scale`` is a parameter holding the log of the scale (open_clip's layout; ``forward``
    returns its exp); ``logit_bias`` a parameter or None. A subclass calls ``_init_logits`` in
    its ``__init__`` and implements the per-batch ``_image_features`` / ``_text_features`` /
    ``_image_tokens`` and ``frozen_encoders``.
    """

    logit_bias: nn.Parameter | None

    def _init_logits(self, logit_scale: torch.Tensor | float | None,
                     logit_bias: torch.Tensor | float | None, device: torch.device) -> None:
        """Register ``logit_scale`` (the log of the scale; None: log 100) and ``logit_bias``."""
        self.has_trained_logit_scale = logit_scale is not None
        scale = math.log(DEFAULT_LOGIT_SCALE) if logit_scale is None else logit_scale
        self.logit_scale = _scalar_parameter(scale, device)
        self.logit_bias = None if logit_bias is None else _scalar_parameter(logit_bias, device)

    # --- what a model provides -------------------------------------------------------------------
    @property
    @abstractmethod
    def image_preprocess(self) -> Preprocess:
        """How pixels are prepared for the image tower (size, mean, std)."""

    @abstractmethod
    def frozen_encoders(self) -> list[Any]:
        """The frozen encoders (not submodules) that ``.to()`` moves with the parameters."""

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """One batch of preprocessed pixels on the model's device -> B x d float32."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """One batch of strings -> B x d float32 on the model's device."""

    @abstractmethod
    def _image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """One batch of whole-image pixels -> B x N x d float32 per-patch embeddings, grid."""

    # --- devices and dtypes ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's parameters are and where inputs go."""
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        """The trainable parts' dtype (frozen backbones stay float32); outputs are float32."""
        return self.logit_scale.dtype

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> CLIPLikeModel:
        """What ``.to()``, ``.cuda()``, ``.cpu()``, ``.half()`` ... run: the parameters, and the
        frozen encoders moved to the same device (they keep their own dtype, float32)."""
        before = self.device if hasattr(self, "logit_scale") else torch.device("cpu")
        super()._apply(fn, recurse)
        after = fn(torch.zeros((), device=before)).device  # where this call sends tensors
        for encoder in self.frozen_encoders():
            move_encoder(encoder, after)
        return self

    # --- inputs ----------------------------------------------------------------------------------
    def tokenizer(self, texts: Texts) -> TextBatch:
        """Tokenizer-like callable: vlalign text towers tokenise internally (see ``tokenize``)."""
        return tokenize(texts)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> 3 x H x W tensor as the image tower expects."""
        return image_to_tensor(image, self.image_preprocess)

    def pixels(self, images: Images, whole: bool = False) -> torch.Tensor:
        """A batch of images as preprocessed pixels on the model's device; ``whole``: PIL
        images resized whole, without the crop (``Preprocess.whole_image``)."""
        count = 1 if isinstance(images, Image.Image) else max(1, len(images))
        return torch.cat(list(self.pixel_batches(images, count, whole)))

    def pixel_batches(self, images: Images, batch_size: int = BATCH_SIZE,
                      whole: bool = False) -> Iterator[torch.Tensor]:
        """Preprocessed pixels on the model's device, ``batch_size`` images at a time (PIL
        images converted chunk by chunk, so a long list never becomes one giant tensor)."""
        _check_batch_size(batch_size)
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            if images.dim() != 4:
                raise UserError(f"image tensors must be B x 3 x H x W, got shape "
                                f"{tuple(images.shape)}")
            for chunk in images.split(batch_size) if len(images) else [images]:
                yield chunk.to(self.device)
            return
        images = list(images)
        if not images:
            raise UserError("no images to encode")
        pre = self.image_preprocess.whole_image() if whole else self.image_preprocess
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            yield torch.stack([image_to_tensor(image, pre) for image in chunk]).to(self.device)

    # --- open_clip's methods ---------------------------------------------------------------------
    def encode_image(self, images: Images, normalize: bool = False,
                     batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Images (preprocessed tensor B x 3 x H x W, or PIL images) -> B x d float32, computed
        ``batch_size`` images at a time. Follows the caller's grad mode (see the module doc)."""
        out = torch.cat([self._image_features(p) for p in self.pixel_batches(images, batch_size)])
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, texts: Texts, normalize: bool = False,
                    batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Strings (or a ``tokenizer`` output) -> B x d float32, ``batch_size`` strings at a
        time. Follows the caller's grad mode (see the module doc)."""
        texts = tokenize(texts)
        _check_batch_size(batch_size)
        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)] or [[]]
        out = torch.cat([self._text_features(list(chunk)) for chunk in chunks])
        return F.normalize(out, dim=-1) if normalize else out

    @torch.no_grad()
    def encode_image_tokens(self, images: Images, normalize: bool = True,
                            batch_size: int = BATCH_SIZE
                            ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid.
        PIL images are resized whole, without the crop, so the map covers each image. Never
        builds a graph (``SAILVisionTower`` is the differentiable token path)."""
        outs = [self._image_tokens(p) for p in self.pixel_batches(images, batch_size, True)]
        tokens = torch.cat([t for t, _ in outs])
        return (F.normalize(tokens, dim=-1) if normalize else tokens), outs[0][1]

    def forward(self, image: Images | None = None, text: Texts | None = None,
                output_dict: bool = True) -> dict[str, torch.Tensor] | tuple:
        """open_clip's ``CLIP.forward``: ``image_features`` and ``text_features`` (normalised;
        each only when its input is given), ``logit_scale`` (exp'd) and ``logit_bias`` (when the
        model has one) as a dict; ``output_dict=False``: the tuple (image_features,
        text_features, logit_scale[, logit_bias]) with None for a missing input. Gradients reach
        the heads / student and the scale and bias."""
        out: dict[str, torch.Tensor] = {}
        if image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)
        out["logit_scale"] = self.logit_scale.float().exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.float()
        if output_dict:
            return out
        extra = (out["logit_bias"],) if self.logit_bias is not None else ()
        return (out.get("image_features"), out.get("text_features"), out["logit_scale"], *extra)

    @torch.no_grad()
    def classify(self, images: Images, class_names: list[str],
                 templates: tuple[str, ...] | list[str] = ("a photo of {a} {c}.",),
                 batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Zero-shot class probabilities B x C with a prompt-template ensemble per class
        (``{c}`` is the class name, ``{a}`` its article; see ``vlalign.data.templates``), images
        and prompts ``batch_size`` at a time. Logits are 100 x cosine for every model (CLIP's
        convention, DESIGN 4), not the trained ``logit_scale``. Never builds a graph."""
        classes = self.class_embeddings(class_names, templates, batch_size)
        logits = 100 * self.encode_image(images, normalize=True, batch_size=batch_size) @ classes.T
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def class_embeddings(self, class_names: list[str], templates: Sequence[str],
                         batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """C x d unit vectors, one per class: the mean of its prompts' normalised text
        embeddings (the template ensemble of zero-shot classification), renormalised."""
        prompts = [format_prompt(t, c) for c in class_names for t in templates]
        classes = self.encode_text(prompts, normalize=True, batch_size=batch_size)
        classes = classes.view(len(class_names), len(templates), -1)
        return F.normalize(classes.mean(dim=1), dim=-1)
