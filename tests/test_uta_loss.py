"""UTA, MIM and full-distillation losses: values at the extremes, positions, weights, gradients."""

import pytest
import torch

from vlalign.uta.loss import cosine_distance, distill_loss, mim_loss, uta_loss
from vlalign.uta.masking import gather_tokens, keep_to_mask, sample_keep
from vlalign.uta.student import create_student

STUDENT = "eva02_tiny_patch14_224"  # timm EVA-02-Ti, shrunk by the overrides
pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher(b: int = 3, n: int = 16, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(b, n, d, generator=gen), torch.randn(b, d, generator=gen)


def test_zero_when_equal_two_when_opposite_for_every_loss() -> None:
    tokens, pooled = _teacher()
    keep = sample_keep(3, (4, 4), 0.5, generator=0)
    mask = keep_to_mask(keep, 16)
    for sign, expected in ((1.0, 0.0), (-1.0, 2.0)):
        scaled = 3.0 * sign  # cosine: the student's scale does not matter
        for terms in (uta_loss(scaled * pooled, scaled * gather_tokens(tokens, keep), pooled,
                               tokens, keep, cls_weight=0.5),
                      mim_loss(scaled * pooled, scaled * tokens, pooled, tokens, mask, 0.5),
                      distill_loss(scaled * pooled, scaled * tokens, pooled, tokens, 0.5)):
            torch.testing.assert_close(terms.tokens, torch.tensor(expected), atol=1e-6, rtol=0)
            torch.testing.assert_close(terms.cls, torch.tensor(expected), atol=1e-6, rtol=0)
            torch.testing.assert_close(terms.total, torch.tensor(1.5 * expected), atol=1e-6,
                                       rtol=0)


def test_uta_compares_each_kept_token_with_the_teacher_at_its_position() -> None:
    tokens, pooled = _teacher()
    keep = sample_keep(3, (4, 4), 0.5, "block", generator=1)
    right = uta_loss(pooled, gather_tokens(tokens, keep), pooled, tokens, keep)
    shifted = uta_loss(pooled, gather_tokens(tokens, (keep + 1) % 16), pooled, tokens, keep)
    assert right.tokens.abs() < 1e-6 and shifted.tokens > 0.3
    per_token = cosine_distance(torch.randn(3, 8, 8), gather_tokens(tokens, keep))
    assert per_token.shape == (3, 8) and (per_token >= 0).all() and (per_token <= 2).all()


def test_mim_counts_masked_positions_only_distill_counts_all() -> None:
    tokens, pooled = _teacher()
    mask = keep_to_mask(sample_keep(3, (4, 4), 0.5, generator=2), 16)
    student = tokens.clone()
    student[~mask] = -student[~mask]  # wrong on every visible position, right on masked ones
    assert mim_loss(pooled, student, pooled, tokens, mask).tokens.abs() < 1e-6
    torch.testing.assert_close(distill_loss(pooled, student, pooled, tokens).tokens,
                               torch.tensor(1.0))  # half the positions at distance 2


def test_gradients_reach_the_student_not_the_teacher() -> None:
    tokens, pooled = _teacher()
    tokens.requires_grad_(True)
    keep = sample_keep(3, (4, 4), 0.5, generator=0)
    student = torch.randn(3, 8, 8, requires_grad=True)
    cls = torch.randn(3, 8, requires_grad=True)
    uta_loss(cls, student, pooled, tokens, keep, cls_weight=2.0).total.backward()
    assert student.grad is not None and student.grad.any() and cls.grad.any()
    assert tokens.grad is None


def test_a_few_uta_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = create_student(STUDENT, 8, img_size=32, patch_size=8, dim=32, depth=2, heads=2)
    tokens, pooled = _teacher(4)
    pixels = torch.randn(4, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        keep = sample_keep(4, (4, 4), 0.5, "reversed_block", generator=step)
        out = model(pixels, keep)
        loss = uta_loss(out.cls, out.tokens, pooled, tokens, keep).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
