"""Weighted k-NN: known neighbourhoods give known accuracies, and blocking changes nothing."""

import pytest
import torch

from vlalign.eval import knn

pytestmark = pytest.mark.usefixtures("one_thread")


def _clusters(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """One tight cluster per class around the class's axis in 8 dimensions."""
    generator = torch.Generator().manual_seed(seed)
    return torch.eye(8)[labels] + 0.01 * torch.randn(labels.shape[0], 8, generator=generator)


def _reference(train, train_labels, test, test_labels, k, temperature):
    """Unblocked k-NN vote written the obvious way, for data without ties."""
    sims = torch.nn.functional.normalize(test, dim=-1) @ torch.nn.functional.normalize(
        train, dim=-1).T
    values, columns = sims.topk(k, dim=1)
    correct = 0
    for row in range(test.shape[0]):
        votes = {}
        for sim, column in zip(values[row].tolist(), columns[row].tolist()):
            label = int(train_labels[column])
            votes[label] = votes.get(label, 0.0) + torch.tensor(sim / temperature).exp().item()
        correct += max(votes, key=votes.get) == int(test_labels[row])
    return correct / test.shape[0]


def test_clustered_features_are_perfect_and_wrong_labels_score_zero():
    train_labels = torch.arange(4).repeat(10)
    test_labels = torch.arange(4).repeat(3)
    train, test = _clusters(train_labels, 0), _clusters(test_labels, 1)
    perfect = knn.evaluate(train, train_labels, test, test_labels, ks=(1, 5, 10))
    assert perfect == {"knn_acc@1": 1.0, "knn_acc@5": 1.0, "knn_acc@10": 1.0}
    wrong = knn.evaluate(train, train_labels, test, (test_labels + 1) % 4, ks=(1, 10))
    assert wrong == {"knn_acc@1": 0.0, "knn_acc@10": 0.0}


def test_weighted_vote_beats_majority_on_hand_example():
    # one class-0 neighbour at similarity 1.0, two class-1 neighbours at similarity 0.8
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])
    train_labels = torch.tensor([0, 1, 1])
    test, test_labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # T = 0.07: exp(1 / 0.07) is ~17x exp(0.8 / 0.07), which beats the two class-1 votes
    sharp = knn.evaluate(train, train_labels, test, test_labels, ks=(1, 3), temperature=0.07)
    assert sharp == {"knn_acc@1": 1.0, "knn_acc@3": 1.0}
    # T = 100: weights are nearly equal, so the vote is a majority vote for class 1
    flat = knn.evaluate(train, train_labels, test, test_labels, ks=(1, 3), temperature=100.0)
    assert flat == {"knn_acc@1": 1.0, "knn_acc@3": 0.0}


def test_blocked_equals_unblocked_and_matches_reference():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=generator)
    test = torch.randn(50, 16, generator=generator)
    train_labels = torch.randint(0, 5, (300,), generator=generator)
    test_labels = torch.randint(0, 5, (50,), generator=generator)
    ks = (1, 3, 20)
    small = knn.evaluate(train, train_labels, test, test_labels, ks=ks, block=7)
    whole = knn.evaluate(train, train_labels, test, test_labels, ks=ks, block=10000)
    assert small == whole
    for k in ks:
        expected = _reference(train, train_labels, test, test_labels, k, 0.07)
        assert small[f"knn_acc@{k}"] == pytest.approx(expected)


def test_k_above_train_size_is_clipped_but_keeps_its_name():
    train_labels = torch.tensor([0, 0, 1, 1])
    train, test = _clusters(train_labels, 0), _clusters(torch.tensor([0, 1, 1]), 1)
    test_labels = torch.tensor([0, 1, 1])
    clipped = knn.evaluate(train, train_labels, test, test_labels, ks=(10, 200))
    exact = knn.evaluate(train, train_labels, test, test_labels, ks=(4,))
    assert clipped == {"knn_acc@10": exact["knn_acc@4"], "knn_acc@200": exact["knn_acc@4"]}


def test_ties_go_to_lower_training_row_then_lower_class():
    # five identical training rows: any k-subset is tied, the lowest rows must be taken
    train = torch.ones(5, 3)
    train_labels = torch.tensor([2, 2, 0, 0, 0])
    test = torch.ones(1, 3)
    metrics = knn.evaluate(train, train_labels, test, torch.tensor([2]), ks=(1, 2, 5))
    assert metrics == {"knn_acc@1": 1.0, "knn_acc@2": 1.0, "knn_acc@5": 0.0}
    # an even class vote (one row each, equal weights) goes to the lower class id
    split = knn.evaluate(train[:2], torch.tensor([3, 1]), test, torch.tensor([1]), ks=(1, 2))
    assert split == {"knn_acc@1": 0.0, "knn_acc@2": 1.0}
