"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Both sides are L2-normalised; each test item takes its top ``max(ks)`` training neighbours by
cosine similarity, weights each by ``exp(sim / temperature)``, sums the weights per class over its
first k neighbours and predicts the heaviest class, reported as ``knn_acc@k`` (a fraction).
Similarities are computed ``block`` test rows at a time, so M x N never sits in memory at once.
A k above the number of training items N is clipped to N but keeps its name.

Ties are deterministic: neighbours are ordered by similarity, then by training row (an exact tie
goes to the lower row, also at the k-th place), and a tied class vote goes to the lower class id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _neighbours(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (similarities, columns) per row, ordered by similarity then column, ties to low."""
    kth = scores.topk(k, dim=1).values[:, -1:]  # b x 1
    keep = scores > kth
    tied = scores == kth
    room = k - keep.sum(dim=1, keepdim=True)
    crowded = (tied.sum(dim=1, keepdim=True) > room).squeeze(1)  # more ties than places left
    tied[crowded] &= tied[crowded].int().cumsum(dim=1) <= room[crowded]
    keep |= tied
    columns = keep.nonzero()[:, 1].view(-1, k)  # row-major: ascending columns within each row
    values = scores.gather(1, columns)
    order = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, order), columns.gather(1, order)


def evaluate(train_features: torch.Tensor, train_labels: torch.Tensor,
             test_features: torch.Tensor, test_labels: torch.Tensor,
             ks: tuple[int, ...] = (10, 20, 100, 200), temperature: float = 0.07,
             block: int = 1024) -> dict[str, float]:
    """``knn_acc@k`` for every k in ``ks``: accuracy of the similarity-weighted k-NN vote."""
    train = F.normalize(train_features.float(), dim=-1)
    test = F.normalize(test_features.float(), dim=-1)
    train_labels, test_labels = train_labels.long(), test_labels.long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    clipped = {k: min(k, train.shape[0]) for k in ks}
    deepest = max(clipped.values())
    correct = dict.fromkeys(ks, 0)
    for start in range(0, test.shape[0], block):
        similarity, columns = _neighbours(test[start:start + block] @ train.T, deepest)
        weights = (similarity / temperature).exp()  # b x K
        neighbour_labels = train_labels[columns]  # b x K
        truth = test_labels[start:start + block]
        for k in ks:
            votes = weights.new_zeros(truth.shape[0], num_classes)
            votes.scatter_add_(1, neighbour_labels[:, :clipped[k]], weights[:, :clipped[k]])
            correct[k] += int((votes.argmax(dim=1) == truth).sum())
    return {f"knn_acc@{k}": correct[k] / test.shape[0] for k in ks}
