"""Winoground and MMVP-VLM scores of items made of two images and two captions.

``scores[n, i, j]`` is the similarity of image i and caption j of item n; caption j describes
image j. Winoground's ``text_score`` asks each image to prefer its own caption, ``image_score``
asks each caption to prefer its own image, and ``group_score`` asks both. Comparisons are strict,
so ties count as wrong. With random scores the expected values are 1/4, 1/4 and 1/6 (group: the
two matching scores must be the top two of four, 2! * 2! / 4! orderings).
MMVP-VLM asks each statement (caption) to pick its own image: the softmax over the two images is
above 0.5 exactly when its own image scores strictly higher, i.e. Winoground's image score.
"""

from __future__ import annotations

import torch


def _checked(scores: torch.Tensor, tags: list[str] | None) -> torch.Tensor:
    """Validate the N x 2 x 2 shape and the tag count; return the scores as float on the CPU."""
    if scores.dim() != 3 or scores.shape[1:] != (2, 2):
        raise ValueError(f"scores must be N x 2 x 2, got {tuple(scores.shape)}")
    if tags is not None and len(tags) != scores.shape[0]:
        raise ValueError(f"got {len(tags)} tags for {scores.shape[0]} items")
    return scores.detach().float().cpu()


def _item_scores(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-item booleans for text, image and group scores."""
    text = (scores[:, 0, 0] > scores[:, 0, 1]) & (scores[:, 1, 1] > scores[:, 1, 0])
    image = (scores[:, 0, 0] > scores[:, 1, 0]) & (scores[:, 1, 1] > scores[:, 0, 1])
    return {"text_score": text, "image_score": image, "group_score": text & image}


def _per_tag(passed: torch.Tensor, tags: list[str]) -> dict[str, float]:
    """Fraction of passing items for each tag, in sorted tag order."""
    tags_of = {tag: [t == tag for t in tags] for tag in sorted(set(tags))}
    return {tag: passed[mask].float().mean().item() for tag, mask in tags_of.items()}


def evaluate(scores: torch.Tensor, tags: list[str] | None = None) -> dict[str, float]:
    """Winoground ``text_score``, ``image_score``, ``group_score``; ``<score>/<tag>`` per tag."""
    items = _item_scores(_checked(scores, tags))
    metrics = {name: passed.float().mean().item() for name, passed in items.items()}
    if tags is not None:
        for name, passed in items.items():
            metrics |= {f"{name}/{tag}": v for tag, v in _per_tag(passed, tags).items()}
    return metrics


def evaluate_mmvp(scores: torch.Tensor, tags: list[str]) -> dict[str, float]:
    """``mmvp/<pattern>`` accuracy per visual pattern and their unweighted mean ``mmvp_average``."""
    per_tag = _per_tag(_item_scores(_checked(scores, tags))["image_score"], tags)
    metrics = {f"mmvp/{tag}": v for tag, v in per_tag.items()}
    metrics["mmvp_average"] = sum(per_tag.values()) / len(per_tag)
    return metrics
