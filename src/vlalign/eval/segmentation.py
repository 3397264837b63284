"""Open-vocabulary semantic segmentation: dense cosine logits from patch embeddings, and mIoU.

``dense_logits`` scores every patch against a text classifier and upsamples bilinearly to the
mask size. ``ConfusionAccumulator`` counts pixels (row = target class, column = predicted class)
over pixels whose target is not ``ignore_index``. ``miou`` averages IoU over the classes that
appear in the target or the prediction; classes absent from both have no defined IoU and are left
out (as in mmsegmentation). ``mean_acc`` averages per-class recall over classes in the target.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

Mask = torch.Tensor | np.ndarray


def dense_logits(patch_embeddings: torch.Tensor, grid: tuple[int, int],
                 classifier: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x P x d patches (row-major grid) and C x d classes -> B x C x H x W cosine logits."""
    rows, cols = grid
    batch, patches, _ = patch_embeddings.shape
    if patches != rows * cols:
        raise ValueError(f"{patches} patches do not fill a {rows} x {cols} grid")
    logits = F.normalize(patch_embeddings.float(), dim=-1) @ F.normalize(classifier.float(),
                                                                          dim=-1).T
    logits = logits.transpose(1, 2).reshape(batch, -1, rows, cols)  # B x C x rows x cols
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ConfusionAccumulator:
    """Pixel confusion matrix over many masks; ``metrics()`` gives mIoU and accuracies."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: Mask, target: Mask) -> None:
        """Add one H x W or B x H x W prediction/target pair (integer class ids)."""
        pred, target = torch.as_tensor(pred).long(), torch.as_tensor(target).long()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        labelled = target != self.ignore_index
        pred, target = pred[labelled], target[labelled]
        for name, ids in (("target", target), ("prediction", pred)):
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"{name} class ids must lie in [0, {self.num_classes}) on pixels "
                                 f"not marked ignore_index={self.ignore_index}; "
                                 f"got {ids.min()}..{ids.max()}")
        counts = torch.bincount(target * self.num_classes + pred,
                                minlength=self.num_classes ** 2)
        self.matrix += counts.view(self.num_classes, self.num_classes).cpu()

    def metrics(self) -> dict[str, float]:
        """``miou``, ``pixel_acc``, ``mean_acc`` and ``iou/<class>`` for classes seen."""
        matrix = self.matrix.double()
        if matrix.sum() == 0:
            raise ValueError("no labelled pixels accumulated")
        hits = matrix.diagonal()
        in_target, in_pred = matrix.sum(dim=1), matrix.sum(dim=0)
        union = in_target + in_pred - hits
        seen = (union > 0).nonzero().flatten().tolist()
        iou = {c: (hits[c] / union[c]).item() for c in seen}
        present = in_target > 0
        return {
            "miou": sum(iou.values()) / len(iou),
            "pixel_acc": (hits.sum() / matrix.sum()).item(),
            "mean_acc": (hits[present] / in_target[present]).mean().item(),
        } | {f"iou/{c}": v for c, v in iou.items()}


def evaluate(predictions: Iterable[Mask], targets: Iterable[Mask], num_classes: int,
             ignore_index: int = 255) -> dict[str, float]:
    """Accumulate paired prediction/target masks and return ``ConfusionAccumulator.metrics()``."""
    accumulator = ConfusionAccumulator(num_classes, ignore_index)
    for pred, target in zip(predictions, targets, strict=True):
        accumulator.update(pred, target)
    return accumulator.metrics()
