"""Oracle tests for the evaluation kernels: known embeddings give known metrics."""

import pytest
import torch

from vlalign.eval import retrieval, zeroshot


def _one_hot(ids: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, dim).float()


def test_retrieval_oracle_is_perfect_and_reversed_is_zero():
    images = torch.eye(6)
    owner = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])  # several captions for images 0 and 5
    texts = _one_hot(owner, 6)
    perfect = retrieval.evaluate(images, texts, owner, ks=(1, 5))
    assert all(v == 1.0 for v in perfect.values())
    reversed_texts = -texts  # every caption least similar to its own image
    worst = retrieval.evaluate(images, reversed_texts, owner, ks=(1,))
    assert worst["image_retrieval_recall@1"] == 0.0
    assert worst["text_retrieval_recall@1"] == 0.0


def test_retrieval_hand_computed_recall():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]])
    texts = torch.tensor([[1.0, 0.1], [1.0, 0.05], [0.0, 1.0]])
    owner = torch.tensor([0, 2, 1])
    metrics = retrieval.evaluate(images, texts, owner, ks=(1, 2), block=2)
    # caption 0 -> image 0 first (hit@1); caption 1 -> image 0 first, image 2 second (hit@2);
    # caption 2 -> image 1 first (hit@1)
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_retrieval_recall@2"] == 1.0
    # image 0 -> caption 1 (0.999) above its own caption 0 (0.995): miss@1, hit@2
    # image 1 -> its caption 2 first: hit@1
    # image 2 -> caption 0 (0.77) above its own caption 1 (0.74): miss@1, hit@2
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert metrics["text_retrieval_recall@2"] == 1.0


def test_retrieval_ties_count_against_the_query():
    # a model that embeds every image alike must not look perfect: ties rank the positive last
    owner = torch.tensor([0, 1, 1, 2])
    constant = retrieval.evaluate(torch.ones(3, 4), torch.randn(4, 4), owner, ks=(1, 2, 3))
    assert constant["image_retrieval_recall@1"] == 0.0
    assert constant["image_retrieval_recall@2"] == 0.0  # 2 other images tie with each positive
    assert constant["image_retrieval_recall@3"] == 1.0
    # a tie among an image's own captions is no penalty
    both = retrieval.evaluate(torch.eye(2), torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]),
                              torch.tensor([0, 0, 1]), ks=(1,))
    assert both["text_retrieval_recall@1"] == 1.0


def test_retrieval_random_is_near_chance():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(500, 64, generator=generator)
    texts = torch.randn(500, 64, generator=generator)
    metrics = retrieval.evaluate(images, texts, torch.arange(500), ks=(10,))
    assert abs(metrics["image_retrieval_recall@10"] - 10 / 500) < 0.02


def test_zero_shot_oracle_and_mean_per_class_recall():
    classifier = torch.eye(3)
    labels = torch.tensor([0, 0, 0, 1, 2])
    perfect = zeroshot.evaluate(_one_hot(labels, 3), labels, classifier)
    assert perfect == {"acc1": 1.0, "mean_per_class_recall": 1.0}  # 3 classes: no acc5
    predictions = torch.tensor([0, 0, 0, 0, 2])  # class 1 always wrong
    metrics = zeroshot.evaluate(_one_hot(predictions, 3), labels, classifier)
    assert metrics["acc1"] == pytest.approx(4 / 5)
    assert abs(metrics["mean_per_class_recall"] - 2 / 3) < 1e-6
    counts = zeroshot.confusion_matrix(_one_hot(predictions, 3), labels, classifier)
    assert counts.tolist() == [[3, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_classifier_averages_normalised_templates():
    def encode(prompts):
        return torch.stack([torch.tensor([1.0, 0.0]) if "cat" in p else torch.tensor([0.0, 3.0])
                            for p in prompts])

    weights = zeroshot.build_classifier(encode, ["cat", "dog"], ["a {}", "the {}"])
    assert torch.allclose(weights, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
