"""Zero-shot classification with prompt-template ensembles (CLIP_benchmark metric names)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlalign.data.templates import format_prompt


def build_classifier(encode_text: Callable[[list[str]], torch.Tensor], class_names: list[str],
                     templates: list[str]) -> torch.Tensor:
    """Per class: embed every template, filled verbatim (``format_prompt``: ``{c}`` is the class
    name), L2-normalise, average, re-normalise -> C x d (CLIP's prompt ensemble)."""
    prompts = [format_prompt(t, c) for c in class_names for t in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=-1)  # (C*T) x d
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def evaluate(image_emb: torch.Tensor, labels: torch.Tensor,
             classifier: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 and mean_per_class_recall of logits = 100 * normalised images @ classifier.T.

    As CLIP_benchmark: acc5 only when the classifier has at least 5 classes (with fewer, top-5
    is always right, and CLIP_benchmark reports NaN; here the key is absent);
    mean_per_class_recall averages the recall of the classes present in ``labels``.
    """
    logits = 100 * F.normalize(image_emb.float(), dim=-1) @ classifier.T  # N x C
    labels = labels.long()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # N x min(5, C)
    predicted = top[:, 0]
    metrics = {"acc1": (predicted == labels).float().mean().item()}
    if logits.shape[1] >= 5:
        metrics["acc5"] = (top == labels[:, None]).any(dim=1).float().mean().item()
    recalls = [(predicted[labels == c] == c).float().mean().item()
               for c in labels.unique().tolist()]
    return metrics | {"mean_per_class_recall": sum(recalls) / len(recalls)}


def confusion_matrix(image_emb: torch.Tensor, labels: torch.Tensor,
                     classifier: torch.Tensor) -> torch.Tensor:
    """C x C counts: row = true class, column = predicted class."""
    predicted = (F.normalize(image_emb.float(), dim=-1) @ classifier.T).argmax(dim=1)
    num = classifier.shape[0]
    return torch.bincount(labels.long() * num + predicted, minlength=num * num).view(num, num)
