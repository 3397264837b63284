"""Winoground and MMVP-VLM scoring on hand-built two-image, two-caption items."""

import pytest
import torch

from vlalign.eval import pairs

pytestmark = pytest.mark.usefixtures("one_thread")

ORACLE = [[1.0, 0.0], [0.0, 1.0]]
REVERSED = [[0.0, 1.0], [1.0, 0.0]]
TEXT_ONLY = [[1.0, 0.0], [2.0, 3.0]]  # each image prefers its caption; caption 0 prefers image 1
IMAGE_ONLY = [[1.0, 2.0], [0.0, 3.0]]  # each caption prefers its image; image 0 prefers caption 1


def test_oracle_scores_one_and_reversed_scores_zero():
    names = {"text_score", "image_score", "group_score"}
    perfect = pairs.evaluate(torch.tensor([ORACLE] * 3))
    assert perfect == dict.fromkeys(names, 1.0)
    assert pairs.evaluate(torch.tensor([REVERSED] * 3)) == dict.fromkeys(names, 0.0)


def test_text_and_image_scores_are_separate():
    text_only = pairs.evaluate(torch.tensor([TEXT_ONLY]))
    assert text_only == {"text_score": 1.0, "image_score": 0.0, "group_score": 0.0}
    image_only = pairs.evaluate(torch.tensor([IMAGE_ONLY]))
    assert image_only == {"text_score": 0.0, "image_score": 1.0, "group_score": 0.0}


def test_per_tag_scores():
    scores = torch.tensor([ORACLE, TEXT_ONLY, REVERSED, IMAGE_ONLY])
    metrics = pairs.evaluate(scores, tags=["object", "relation", "relation", "object"])
    assert metrics["text_score"] == 0.5
    assert metrics["image_score"] == 0.5
    assert metrics["group_score"] == 0.25
    assert metrics["text_score/object"] == 0.5
    assert metrics["image_score/object"] == 1.0
    assert metrics["group_score/object"] == 0.5
    assert metrics["text_score/relation"] == 0.5
    assert metrics["image_score/relation"] == 0.0
    assert metrics["group_score/relation"] == 0.0
    assert len(metrics) == 9


def test_ties_count_as_wrong():
    flat = pairs.evaluate(torch.ones(2, 2, 2))
    assert flat == {"text_score": 0.0, "image_score": 0.0, "group_score": 0.0}
    one_tie = pairs.evaluate(torch.tensor([[[1.0, 1.0], [0.0, 2.0]]]))  # image 0 cannot choose
    assert one_tie["text_score"] == 0.0
    assert one_tie["image_score"] == 1.0


def test_random_scores_match_chance():
    generator = torch.Generator().manual_seed(0)
    metrics = pairs.evaluate(torch.randn(20000, 2, 2, generator=generator))
    assert metrics["text_score"] == pytest.approx(1 / 4, abs=0.015)
    assert metrics["image_score"] == pytest.approx(1 / 4, abs=0.015)
    assert metrics["group_score"] == pytest.approx(1 / 6, abs=0.015)


def test_mmvp_per_pattern_and_unweighted_average():
    scores = torch.tensor([ORACLE, IMAGE_ONLY, TEXT_ONLY, REVERSED])
    metrics = pairs.evaluate_mmvp(scores, ["color", "color", "color", "count"])
    assert metrics == pytest.approx({"mmvp/color": 2 / 3, "mmvp/count": 0.0,
                                     "mmvp_average": 1 / 3})  # item mean would be 1/2


def test_mmvp_matches_softmax_over_images():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(500, 2, 2, generator=generator)
    image_probs = (100 * scores).softmax(dim=1)  # per caption j, over images i
    picks_own = (image_probs[:, 0, 0] > 0.5) & (image_probs[:, 1, 1] > 0.5)
    metrics = pairs.evaluate_mmvp(scores, ["all"] * 500)
    assert metrics["mmvp/all"] == pytest.approx(picks_own.float().mean().item())
    assert metrics["mmvp_average"] == metrics["mmvp/all"]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="N x 2 x 2"):
        pairs.evaluate(torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="tags"):
        pairs.evaluate(torch.zeros(3, 2, 2), tags=["a"])
