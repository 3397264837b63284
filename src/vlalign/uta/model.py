"""A trained UTA student plus its teacher's text side: a CLIP-like model with VLModel's interface.

The student lands in the teacher's joint image-text space, so its CLS embedding is compared
with the teacher's text embeddings for zero-shot use, and its per-patch tokens (through the same
head) give dense embeddings for segmentation. Saved as ``student.safetensors`` + ``uta.json``
(student config, the student's preprocessing, the teacher's spec and identity); loading rebuilds
the teacher from its spec, refuses one whose identity changed, and never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlalign.backbones.base import Preprocess, image_to_tensor
from vlalign.errors import UserError
from vlalign.sail.model import VLModel
from vlalign.uta.student import StudentConfig, UTAStudent
from vlalign.uta.teachers import Teacher, create_teacher
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json

CONFIG = "uta.json"
WEIGHTS = "student.safetensors"


def student_preprocess(config: StudentConfig, teacher: Preprocess) -> Preprocess:
    """The teacher's normalisation at the student's input size."""
    return Preprocess(size=config.img_size, mean=tuple(teacher.mean), std=tuple(teacher.std),
                      interpolation=teacher.interpolation)


def is_uta_model(path: str | Path) -> bool:
    """True when ``path`` holds a finished UTA run or a saved UTA model."""
    return (Path(path) / CONFIG).exists()


def load_student(path: str | Path) -> tuple[UTAStudent, Preprocess, dict[str, Any]]:
    """The student (eval mode), its preprocessing and the saved config, without the teacher."""
    path = Path(path)
    if not is_uta_model(path) or not (path / WEIGHTS).exists():
        raise UserError(f"{path} is not a UTA model: expected {CONFIG} and {WEIGHTS} (a "
                        "finished `vlalign train uta` run or a `save_pretrained` folder)")
    config = read_json(path / CONFIG)
    student = UTAStudent(StudentConfig(**config["student"]))
    student.load_state_dict(load_tensors(path / WEIGHTS))
    pre = config["preprocess"]
    preprocess = Preprocess(size=pre["size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                            interpolation=pre["interpolation"])
    return student.eval(), preprocess, config


class UTAModel(nn.Module):
    """Student image tower + teacher text tower; ``encode_image`` is the student's CLS."""

    def __init__(self, student: UTAStudent, teacher: Teacher, teacher_spec: str,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.student, self.teacher, self.teacher_spec = student, teacher, teacher_spec
        self.info = dict(info or {})  # training facts kept in uta.json (objective, step, ...)
        self.image_preprocess = student_preprocess(student.config, teacher.preprocess)

    @property
    def config(self) -> dict[str, Any]:
        """What uta.json holds."""
        return {**self.info, "method": "uta", "student": self.student.config.to_dict(),
                "preprocess": self.image_preprocess.to_dict(),
                "teacher": {"spec": self.teacher_spec, "identity": self.teacher.identity,
                            "dim": self.teacher.dim}}

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
        info = {k: v for k, v in config.items()
                if k not in ("method", "student", "preprocess", "teacher")}
        return cls(student, teacher, saved["spec"], info).to(device)

    def save_pretrained(self, path: str | Path) -> None:
        """Write student.safetensors + uta.json (the teacher is named by spec, not copied)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / WEIGHTS, save_tensors(self.student.state_dict()))
        atomic_write_json(path / CONFIG, self.config)

    # --- CLIP-style interface (VLModel's helpers work unchanged on this class) -------------
    tokenizer = VLModel.tokenizer
    _pixels = VLModel._pixels
    classify = VLModel.classify

    @property
    def device(self) -> torch.device:
        return self.student.head.weight.device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> 3 x H x W tensor as the student expects."""
        return image_to_tensor(image, self.image_preprocess)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor | list[Image.Image],
                     normalize: bool = False) -> torch.Tensor:
        """Images (preprocessed tensor B x 3 x H x W, or PIL images) -> B x d embeddings."""
        out = self.student(self._pixels(images)).cls.float()
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_text(self, texts: str | list[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> B x d embeddings from the teacher's text side."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.teacher.encode_text(texts).float().to(self.device)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def encode_image_tokens(self, images: torch.Tensor | list[Image.Image],
                            normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-patch embeddings comparable with text: B x N x d, and the (rows, cols) grid."""
        out = self.student(self._pixels(images)).tokens.float()
        return (F.normalize(out, dim=-1) if normalize else out), self.student.config.grid
