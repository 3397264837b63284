"""Segmentation: dense logits of an oracle recover the layout; mIoU on hand-computed masks."""

import pytest
import torch

from vlalign.eval import segmentation

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 2],
                       [2, 2, 2, 2]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [0, 0, 1, 1],
                     [2, 2, 2, 0],
                     [2, 2, 2, 2]])


def test_perfect_prediction():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8), generator=generator)
    metrics = segmentation.evaluate([target], [target], num_classes=4)
    assert metrics["miou"] == 1.0
    assert metrics["pixel_acc"] == 1.0
    assert metrics["mean_acc"] == 1.0


def test_hand_computed_ious():
    # class 0: 3 hits, union 4 + 4 - 3 = 5; class 1: 4 hits, union 4 + 5 - 4 = 5;
    # class 2: 7 hits, union 8 + 7 - 7 = 8; classes 3 and 4 never appear
    metrics = segmentation.evaluate([PRED], [TARGET], num_classes=5)
    assert metrics == pytest.approx({
        "miou": (0.6 + 0.8 + 0.875) / 3, "pixel_acc": 14 / 16,
        "mean_acc": (3 / 4 + 4 / 4 + 7 / 8) / 3,
        "iou/0": 0.6, "iou/1": 0.8, "iou/2": 0.875,
    })


def test_class_only_predicted_counts_in_miou_but_not_mean_acc():
    pred = PRED.clone()
    pred[3, 3] = 3  # class 3 is never in the target
    metrics = segmentation.evaluate([pred], [TARGET], num_classes=4)
    assert metrics["iou/3"] == 0.0
    assert metrics["iou/2"] == pytest.approx(6 / 8)
    assert metrics["miou"] == pytest.approx((0.6 + 0.8 + 0.75 + 0.0) / 4)
    assert metrics["mean_acc"] == pytest.approx((3 / 4 + 4 / 4 + 6 / 8) / 3)


def test_ignored_pixels_are_excluded():
    target = TARGET.clone()
    target[PRED != TARGET] = 255
    pred = PRED.clone()
    pred[PRED != TARGET] = 99  # whatever sits under ignored pixels is never checked
    metrics = segmentation.evaluate([pred.numpy()], [target.numpy()], num_classes=3)
    assert metrics["miou"] == 1.0
    assert metrics["pixel_acc"] == 1.0
    target[target == 255] = 7
    assert segmentation.evaluate([PRED], [target], 3, ignore_index=7) == metrics


def test_accumulates_batches_and_numpy_like_one_update():
    accumulator = segmentation.ConfusionAccumulator(3)
    accumulator.update(PRED.numpy(), TARGET.numpy())
    accumulator.update(torch.stack([TARGET, PRED]), torch.stack([TARGET, TARGET]))
    assert accumulator.matrix.sum() == 48
    expected = segmentation.evaluate([PRED, TARGET, PRED], [TARGET] * 3, num_classes=3)
    assert accumulator.metrics() == expected
    assert accumulator.matrix.dtype == torch.int64


def test_bad_masks_raise():
    accumulator = segmentation.ConfusionAccumulator(3)
    with pytest.raises(ValueError, match=r"target class ids must lie in \[0, 3\)"):
        accumulator.update(PRED, TARGET + 1)
    with pytest.raises(ValueError, match="prediction class ids"):
        accumulator.update(PRED - 1, TARGET)
    with pytest.raises(ValueError, match="shape"):
        accumulator.update(PRED[:2], TARGET)
    with pytest.raises(ValueError, match="no labelled pixels"):
        accumulator.metrics()
    with pytest.raises(ValueError):
        segmentation.evaluate([PRED, PRED], [TARGET], num_classes=3)


def test_dense_logits_of_an_oracle_recover_the_layout():
    layout = torch.tensor([[0, 1, 2], [2, 0, 1]])  # 2 x 3 patch grid, row-major
    generator = torch.Generator().manual_seed(0)
    classifier = torch.linalg.qr(torch.randn(16, 4, generator=generator))[0].T  # orthonormal
    patches = 3.0 * classifier[layout.flatten()].expand(2, -1, -1)  # B x P x d, unnormalised
    at_grid = segmentation.dense_logits(patches, (2, 3), 5.0 * classifier, size=(2, 3))
    assert at_grid.shape == (2, 4, 2, 3)
    assert torch.allclose(at_grid[0], torch.nn.functional.one_hot(layout, 4).permute(2, 0, 1)
                          .float(), atol=1e-5)
    upsampled = segmentation.dense_logits(patches, (2, 3), classifier, size=(4, 6))
    assert upsampled.shape == (2, 4, 4, 6)
    expected = layout.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    assert torch.equal(upsampled.argmax(dim=1), expected.expand(2, -1, -1))


def test_dense_logits_shapes_and_grid_check():
    logits = segmentation.dense_logits(torch.randn(3, 12, 8), (3, 4), torch.randn(5, 8), (7, 9))
    assert logits.shape == (3, 5, 7, 9)
    with pytest.raises(ValueError, match="grid"):
        segmentation.dense_logits(torch.randn(1, 12, 8), (3, 5), torch.randn(5, 8), (7, 9))
