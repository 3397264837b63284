"""Distillation losses: UTA (kept tokens), the EVA-02-style MIM baseline (masked tokens) and plain
full-image feature distillation (all tokens), all as 1 - cosine similarity to the teacher.

Every loss is ``tokens + cls_weight * cls``: ``tokens`` is the mean of (1 - cos) over the token
positions the method supervises, ``cls`` the batch mean of (1 - cos(student CLS, teacher pooled)).
Teacher tensors are targets (no gradient flows into them); they must already be on the student's
grid (``TeacherOutput.to_grid``). Each term lies in [0, 2]: 0 when aligned, 2 when opposite.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlalign.uta.masking import gather_tokens


class LossTerms(NamedTuple):
    """total = tokens + cls_weight * cls, with both terms reported for logging."""

    total: torch.Tensor
    tokens: torch.Tensor
    cls: torch.Tensor


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cos along the last dim, computed in float32; the teacher side is detached."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)


def _terms(tokens: torch.Tensor, student_cls: torch.Tensor, teacher_pooled: torch.Tensor,
           cls_weight: float) -> LossTerms:
    cls = cosine_distance(student_cls, teacher_pooled).mean()
    return LossTerms(total=tokens + cls_weight * cls, tokens=tokens, cls=cls)


def uta_loss(student_cls: torch.Tensor, student_tokens: torch.Tensor,
             teacher_pooled: torch.Tensor, teacher_tokens: torch.Tensor, keep: torch.Tensor,
             cls_weight: float = 1.0) -> LossTerms:
    """UTA: student tokens B x K x D (run on ``keep`` B x K) against the teacher's tokens
    B x N x D at the same grid positions, plus the CLS term."""
    targets = gather_tokens(teacher_tokens, keep)
    return _terms(cosine_distance(student_tokens, targets).mean(), student_cls, teacher_pooled,
                  cls_weight)


def mim_loss(student_cls: torch.Tensor, student_tokens: torch.Tensor,
             teacher_pooled: torch.Tensor, teacher_tokens: torch.Tensor, mask: torch.Tensor,
             cls_weight: float = 1.0) -> LossTerms:
    """EVA-02-style MIM: all N student tokens (from ``forward_masked``), loss on the MASKED
    positions only (``mask`` B x N, True = masked), plus the same CLS term as UTA."""
    distance = cosine_distance(student_tokens, teacher_tokens)  # B x N
    weights = mask.to(distance.dtype)
    tokens = (distance * weights).sum() / weights.sum().clamp(min=1.0)
    return _terms(tokens, student_cls, teacher_pooled, cls_weight)


def distill_loss(student_cls: torch.Tensor, student_tokens: torch.Tensor,
                 teacher_pooled: torch.Tensor, teacher_tokens: torch.Tensor,
                 cls_weight: float = 1.0) -> LossTerms:
    """Full-image feature distillation (no masking): every token, plus the CLS term."""
    return _terms(cosine_distance(student_tokens, teacher_tokens).mean(), student_cls,
                  teacher_pooled, cls_weight)
