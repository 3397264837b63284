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
import torch.nn.functional as F

from vlalign.backbones.base import Preprocess
from vlalign.errors import UserError
from vlalign.models.base import CLIPLikeModel, Images
from vlalign.uta.artifact import (
    RECORD_KEYS,
    load_student,
    save_student,
    student_preprocess,
    student_record,
)
from vlalign.uta.student import UTAStudent
from vlalign.uta.teachers import Teacher, create_teacher


class UTAModel(CLIPLikeModel):
    """Student image tower + teacher text tower; ``encode_image`` is the student's CLS."""

    def __init__(self, student: UTAStudent, teacher: Teacher, teacher_spec: str,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.student, self.teacher, self.teacher_spec = student, teacher, teacher_spec
        self.info = dict(info or {})  # training facts kept in uta.json (objective, step, ...)
        self._preprocess = student_preprocess(student.config, teacher.preprocess)

    @property
    def config(self) -> dict[str, Any]:
        """What uta.json holds."""
        return student_record(self.student, self.teacher, self.teacher_spec, self.info)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> UTAModel:
        """Load a UTA run directory or saved model folder, rebuilding the teacher by its spec."""
        student, _, config = load_student(path)
        saved = config["teacher"]
        teacher = create_teacher(saved["spec"], device=device)
        if teacher.identity != saved["identity"]:
            raise UserError(f"{path}: teacher {saved['spec']} now has identity "
                            f"{teacher.identity}, but the student was distilled from "
                            f"{saved['identity']}")
        info = {k: v for k, v in config.items() if k not in RECORD_KEYS}
        return cls(student, teacher, saved["spec"], info).to(device)

    def save_pretrained(self, path: str | Path) -> None:
        """Write student.safetensors + uta.json (the teacher is named by spec, not copied)."""
        save_student(path, self.student, self.teacher, self.teacher_spec, self.info)

    @property
    def device(self) -> torch.device:
        return self.student.head.weight.device

    @property
    def image_preprocess(self) -> Preprocess:
        return self._preprocess

    @torch.inference_mode()
    def encode_image(self, images: Images, normalize: bool = False) -> torch.Tensor:
        """Images (preprocessed tensor B x 3 x H x W, or PIL images) -> B x d embeddings."""
        out = self.student(self.pixels(images)).cls.float()
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_text(self, texts: str | list[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> B x d embeddings from the teacher's text side."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.teacher.encode_text(texts).float().to(self.device)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_image_tokens(self, images: Images,
                            normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid."""
        out = self.student(self.pixels(images, whole=True)).tokens.float()
        return (F.normalize(out, dim=-1) if normalize else out), self.student.config.grid
