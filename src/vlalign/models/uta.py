"""The UTA model: a trained student image tower plus its teacher's text tower.

The student lands in the teacher's joint image-text space, so its CLS embedding is compared
with the teacher's text embeddings for zero-shot use, and its per-patch tokens (through the same
head) give dense embeddings for segmentation. Loading rebuilds the teacher from its spec and
refuses one whose identity changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlalign.backbones.base import Preprocess
from vlalign.errors import UserError
from vlalign.models.base import CLIPLikeModel, joint_space_logits
from vlalign.models.hub import maybe_push
from vlalign.models.sail import trained_logits
from vlalign.uta.artifact import (
    RECORD_KEYS,
    load_student,
    save_student,
    student_preprocess,
    student_record,
)
from vlalign.uta.student import UTAStudent
from vlalign.uta.teachers import (
    Teacher,
    UTATextTeacher,
    create_teacher,
    resolve_teacher_spec,
)

SAIL = "sail:"  # a SAIL teacher's spec: its folder holds the trained scale and bias


class UTAModel(CLIPLikeModel):
    """Student image tower + teacher text tower; ``encode_image`` is the student's CLS.

    The student, ``logit_scale`` and ``logit_bias`` are the parameters; the teacher is not a
    submodule (``.to(device)`` moves it too; it stays float32 and runs without grad). UTA trains
    no logit scale (its losses are cosine distillation), and the student lands in the teacher's
    space: ``logit_scale`` / ``logit_bias`` are the teacher's (given, as ``from_pretrained``
    reads a SAIL teacher's trained ones, or an open_clip teacher's own), else log 100 and None.
    """

    def __init__(self, student: UTAStudent, teacher: Teacher, teacher_spec: str,
                 info: dict[str, Any] | None = None,
                 logit_scale: torch.Tensor | float | None = None,
                 logit_bias: torch.Tensor | float | None = None) -> None:
        super().__init__()
        self.student, self.teacher, self.teacher_spec = student, teacher, teacher_spec
        self.info = dict(info or {})  # training facts kept in uta.json (objective, step, ...)
        self._preprocess = student_preprocess(student.config, teacher.preprocess)
        device = next((p.device for p in student.parameters()), torch.device("cpu"))
        if logit_scale is None and logit_bias is None:
            logit_scale, logit_bias = joint_space_logits(teacher)
        self._init_logits(logit_scale, logit_bias, device)

    @property
    def config(self) -> dict[str, Any]:
        """What uta.json holds."""
        return student_record(self.student, self.teacher, self.teacher_spec, self.info)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> UTAModel:
        """Load a UTA run directory or saved model folder, rebuilding the teacher by its spec."""
        student, _, config = load_student(path)
        saved = config["teacher"]
        teacher = create_teacher(resolve_teacher_spec(saved["spec"], path), device=str(device))
        if teacher.identity != saved["identity"]:
            raise UserError(f"{path}: teacher {saved['spec']} now has identity "
                            f"{teacher.identity}, but the student was distilled from "
                            f"{saved['identity']}")
        info = {k: v for k, v in config.items() if k not in RECORD_KEYS}
        logits = (trained_logits(saved["spec"][len(SAIL):]) if saved["spec"].startswith(SAIL)
                  else joint_space_logits(teacher))
        return cls(student, teacher, saved["spec"], info, *logits).to(device)

    def save_pretrained(self, path: str | Path, push_to_hub: bool = False,
                        repo_id: str | None = None, **hub_options: Any) -> None:
        """Write student.safetensors + uta.json (the teacher is named by spec, not copied; an
        imported text tower, named relative to the folder, is copied with it); with
        ``push_to_hub``, upload the folder (``vlalign.models.hub.push_to_hub`` options)."""
        save_student(path, self.student, self.teacher, self.teacher_spec, self.info)
        if isinstance(self.teacher, UTATextTeacher):
            self.teacher.copy_to(path)
        maybe_push(path, push_to_hub, repo_id, **hub_options)

    def frozen_encoders(self) -> list[Any]:
        return [self.teacher]

    @property
    def image_preprocess(self) -> Preprocess:
        return self._preprocess

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.student(pixels.to(self.device, self.dtype)).cls.float()

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.teacher.encode_text(texts).float().to(self.device)

    def _image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens = self.student(pixels.to(self.device, self.dtype)).tokens.float()
        return tokens, self.student.config.grid
