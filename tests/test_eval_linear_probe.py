"""Linear probe: separable data is solved, unrelated labels stay at chance, runs are repeatable."""

import pytest
import torch

from vlalign.eval import linear_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Gaussian blobs around scaled class axes, shifted off the origin."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    centres = 5 * torch.eye(num_classes, dim)
    noise = spread * torch.randn(labels.shape[0], dim, generator=generator)
    return centres[labels] + noise + 3.0, labels


def test_separable_blobs_are_solved():
    train, train_labels = _blobs(40, 3, 8, 0.5, seed=0)
    test, test_labels = _blobs(20, 3, 8, 0.5, seed=1)
    metrics = linear_probe.evaluate(train, train_labels, test, test_labels)
    assert set(metrics) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "lp_weight_decay"}
    assert metrics["lp_acc1"] == 1.0
    assert metrics["lp_acc5"] == 1.0  # top-3 here: only three classes
    assert metrics["lp_mean_per_class_recall"] == 1.0
    assert metrics["lp_weight_decay"] in linear_probe.WEIGHT_DECAYS


def test_labels_independent_of_features_stay_near_chance():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(1000, 16, generator=generator)
    test = torch.randn(500, 16, generator=generator)
    train_labels = torch.randint(0, 5, (1000,), generator=generator)
    test_labels = torch.randint(0, 5, (500,), generator=generator)
    metrics = linear_probe.evaluate(train, train_labels, test, test_labels)
    assert metrics["lp_acc1"] < 0.35
    assert metrics["lp_mean_per_class_recall"] < 0.35


def test_same_seed_gives_identical_results_and_chosen_decay_is_from_grid():
    train, train_labels = _blobs(30, 4, 12, 3.0, seed=2)
    test, test_labels = _blobs(10, 4, 12, 3.0, seed=3)
    grid = (1e-4, 1e-2, 1.0)
    first = linear_probe.evaluate(train, train_labels, test, test_labels, grid, seed=5)
    second = linear_probe.evaluate(train, train_labels, test, test_labels, grid, seed=5)
    assert first == second
    assert first["lp_weight_decay"] in grid
    only = linear_probe.evaluate(train, train_labels, test, test_labels, (3e-3,))
    assert only["lp_weight_decay"] == 3e-3


def test_validation_split_is_stratified_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 5)
    fit, val = linear_probe._split(labels, 0.2, seed=0)
    assert torch.bincount(labels[val]).tolist() == [2, 1]
    assert sorted(fit.tolist() + val.tolist()) == list(range(15))
    assert torch.equal(val, linear_probe._split(labels, 0.2, seed=0)[1])
    with pytest.raises(ValueError, match="no validation rows"):
        linear_probe.evaluate(torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.randn(1, 2),
                              torch.tensor([0]))
