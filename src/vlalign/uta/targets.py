"""Teacher targets from a feature store: the frozen backbone's stored token maps and pooled
vectors, turned into the teacher's joint-space tokens without running the backbone.

A SAIL teacher is its backbone followed by its vision head, applied per token (the head input
of ``vlalign.sail.model.token_head_inputs``) and to the pooled vector: storing the backbone's output
saves the expensive part, and the head (cheap) runs at train time. A transformers CLIP teacher's
backbone (``hf:...?pool=proj``) already outputs projected tokens, so its stored features are the
targets. open_clip teachers have no stored form (their tokens need the whole tower).
"""

from __future__ import annotations

import torch

from vlalign.backbones.base import VisionEncoder, VisionOutput
from vlalign.errors import UserError
from vlalign.sail.model import token_head_inputs
from vlalign.uta.teachers import HFCLIPTeacher, SAILTeacher, Teacher, TeacherOutput


def stored_backbone(teacher: Teacher) -> VisionEncoder:
    """The vision backbone whose stored features rebuild ``teacher``'s targets."""
    if isinstance(teacher, SAILTeacher):
        return teacher.model.vision
    if isinstance(teacher, HFCLIPTeacher):
        return teacher.vision
    raise UserError("targets=store works with sail: and hf: teachers (their backbone's token "
                    "maps can be stored); use targets=online for this teacher")


class StoredTargets:
    """Stored backbone features (pooled B x D, tokens B x N x Dt on ``grid``) -> targets."""

    def __init__(self, teacher: Teacher, grid: tuple[int, int]) -> None:
        self.teacher, self.grid = teacher, tuple(grid)
        backbone = stored_backbone(teacher)
        side = backbone.preprocess.size
        probe = backbone.encode(torch.zeros(1, 3, side, side), tokens=True)
        self.has_cls = probe.cls is not None  # ViT backbones: CLS is the pooled vector's first half

    def __call__(self, pooled: torch.Tensor, tokens: torch.Tensor) -> TeacherOutput:
        if isinstance(self.teacher, HFCLIPTeacher):
            return TeacherOutput(tokens.float(), pooled.float(), self.grid)
        cls = pooled[:, :tokens.shape[-1]] if self.has_cls else None
        out = VisionOutput(pooled=pooled, tokens=tokens, grid=self.grid, cls=cls)
        heads = self.teacher.model.heads
        joint = heads.encode_image_features(token_head_inputs(out), normalize=False)
        joint_pooled = heads.encode_image_features(pooled, normalize=False)
        return TeacherOutput(joint.clone(), joint_pooled.clone(), self.grid)  # not inference
