"""Linear probe: multinomial logistic regression on frozen features, weight decay chosen on val.

Protocol (after CLIP_benchmark): features are standardised per dimension with the training set's
mean and standard deviation; a seeded, stratified ``val_fraction`` of each training class is held
out; a float32 linear layer is fitted full-batch with L-BFGS (strong-Wolfe line search) on
cross-entropy + ``wd / 2 * ||W||^2`` (bias not decayed) for every weight decay, strongest first,
each fit warm-started from the previous one; the weight decay with the best validation top-1 wins
(ties go to the stronger one); the probe is refitted on the whole training set with it and scored
on the test set. Deterministic given ``seed`` (the split is the only random step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _split(labels: torch.Tensor, val_fraction: float,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (fit, val) row indices: ``val_fraction * n_c``, rounded, of each class to val."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.shape[0], generator=generator)
    order = order[labels[order].argsort(stable=True)]  # grouped by class, shuffled within
    counts = torch.bincount(labels)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(labels.shape[0]) - starts[labels[order]]  # position within its class
    to_val = rank < (val_fraction * counts[labels[order]]).round()
    return order[~to_val].sort().values, order[to_val].sort().values


def _fit(features: torch.Tensor, labels: torch.Tensor, weight_decay: float, max_iter: int,
         start: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS on L2-penalised cross-entropy from ``start``; returns (weight, bias).

    Stops after ``max_iter`` iterations or once the loss or the step changes by less than 1e-6.
    """
    weight, bias = (p.clone().requires_grad_() for p in start)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
                                  tolerance_change=1e-6, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, features, weight.T), labels)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _top(features: torch.Tensor, probe: tuple[torch.Tensor, torch.Tensor],
         k: int) -> torch.Tensor:
    """Top-k predicted classes per row, best first."""
    return torch.addmm(probe[1], features, probe[0].T).topk(k, dim=1).indices


def evaluate(train_features: torch.Tensor, train_labels: torch.Tensor,
             test_features: torch.Tensor, test_labels: torch.Tensor,
             weight_decays: tuple[float, ...] = WEIGHT_DECAYS, val_fraction: float = 0.2,
             max_iter: int = 100, seed: int = 0) -> dict[str, float]:
    """Test ``lp_acc1``, ``lp_acc5`` (top-min(5, C)), ``lp_mean_per_class_recall``; chosen wd."""
    train_labels, test_labels = train_labels.long(), test_labels.long()
    train, test = train_features.float(), test_features.float()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit_rows, val_rows = (rows.to(train.device)
                          for rows in _split(train_labels.cpu(), val_fraction, seed))
    if val_rows.numel() == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation rows")
    fit, fit_labels = train[fit_rows], train_labels[fit_rows]
    val, val_labels = train[val_rows], train_labels[val_rows]
    probe = (train.new_zeros(num_classes, train.shape[1]), train.new_zeros(num_classes))
    candidates = []  # (val acc1, weight decay, probe), strongest weight decay first
    for wd in sorted(weight_decays, reverse=True):
        probe = _fit(fit, fit_labels, wd, max_iter, probe)
        hits = _top(val, probe, 1)[:, 0] == val_labels
        candidates.append((hits.float().mean().item(), wd, probe))
    _, weight_decay, probe = max(candidates, key=lambda c: c[0])  # first best: stronger wins
    probe = _fit(train, train_labels, weight_decay, max_iter, probe)
    top = _top(test, probe, min(5, num_classes))
    hit1 = top[:, 0] == test_labels
    recalls = [hit1[test_labels == c].float().mean() for c in test_labels.unique()]
    return {"lp_acc1": hit1.float().mean().item(),
            "lp_acc5": (top == test_labels[:, None]).any(dim=1).float().mean().item(),
            "lp_mean_per_class_recall": torch.stack(recalls).mean().item(),
            "lp_weight_decay": weight_decay}
