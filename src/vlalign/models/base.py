"""The CLIP-like interface every vlalign model offers (open_clip's duck type), so
CLIP_benchmark-style code, the evaluation suite and `vlalign classify` use any of them unchanged.

A model says how to embed images, texts and image patches and how its pixels are prepared; the
rest (tokenizer, PIL or tensor inputs, zero-shot classification) is shared here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlalign.backbones.base import Preprocess, image_to_tensor
from vlalign.data.templates import format_prompt

Images = torch.Tensor | list[Image.Image]  # preprocessed B x 3 x H x W, or PIL images


class TextBatch(list):
    """What ``tokenizer`` returns: the strings themselves, with a no-op ``.to(device)``."""

    def to(self, *args: Any, **kwargs: Any) -> TextBatch:
        return self


class CLIPLikeModel(nn.Module, ABC):
    """An image tower and a text tower into one joint space, with open_clip's methods."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where inputs must be for the image tower."""

    @property
    @abstractmethod
    def image_preprocess(self) -> Preprocess:
        """How pixels are prepared for the image tower (size, mean, std)."""

    @abstractmethod
    def encode_image(self, images: Images, normalize: bool = False) -> torch.Tensor:
        """Images -> B x d embeddings."""

    @abstractmethod
    def encode_text(self, texts: str | list[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> B x d embeddings."""

    @abstractmethod
    def encode_image_tokens(self, images: Images,
                            normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid.
        PIL images are resized whole, without the crop, so the map covers each image."""

    def tokenizer(self, texts: str | list[str]) -> TextBatch:
        """Tokenizer-like callable: vlalign text towers tokenise internally."""
        return TextBatch([texts] if isinstance(texts, str) else list(texts))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> 3 x H x W tensor as the image tower expects."""
        return image_to_tensor(image, self.image_preprocess)

    def pixels(self, images: Images, whole: bool = False) -> torch.Tensor:
        """A batch of images as preprocessed pixels on the model's device; ``whole``: PIL
        images resized whole, without the crop (``Preprocess.whole_image``)."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        pre = self.image_preprocess.whole_image() if whole else self.image_preprocess
        return torch.stack([image_to_tensor(image, pre) for image in images]).to(self.device)

    @torch.inference_mode()
    def classify(self, images: Images, class_names: list[str],
                 templates: tuple[str, ...] | list[str] = ("a photo of {a} {c}.",)) -> torch.Tensor:
        """Zero-shot class probabilities B x C with a prompt-template ensemble per class
        (``{c}`` is the class name, ``{a}`` its article; see ``vlalign.data.templates``)."""
        prompts = [format_prompt(t, c) for c in class_names for t in templates]
        classes = self.encode_text(prompts, normalize=True).view(len(class_names),
                                                                 len(templates), -1)
        classes = F.normalize(classes.mean(dim=1), dim=-1)  # C x d: template ensemble
        logits = 100 * self.encode_image(images, normalize=True) @ classes.T
        return logits.softmax(dim=-1)
