"""The trained UTA artefact: ``student.safetensors`` + ``uta.json`` (student config, the
student's preprocessing, the teacher's spec and identity, training facts such as the objective
and step). The teacher is named by spec, never copied; loading never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlalign.backbones.base import Preprocess
from vlalign.errors import UserError
from vlalign.uta.student import StudentConfig, UTAStudent
from vlalign.uta.teachers import Teacher
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json

CONFIG = "uta.json"
WEIGHTS = "student.safetensors"
RECORD_KEYS = ("method", "student", "preprocess", "teacher")  # uta.json's keys that are not info


def student_preprocess(config: StudentConfig, teacher: Preprocess) -> Preprocess:
    """The teacher's preprocessing (resize, crop, normalisation) at the student's input size."""
    return teacher.with_size(config.img_size)


def student_record(student: UTAStudent, teacher: Teacher, teacher_spec: str,
                   info: dict[str, Any]) -> dict[str, Any]:
    """What uta.json holds: ``info`` (training facts) plus the student and teacher records."""
    preprocess = student_preprocess(student.config, teacher.preprocess)
    return {**info, "method": "uta", "student": student.config.to_dict(),
            "preprocess": preprocess.to_dict(),
            "teacher": {"spec": teacher_spec, "identity": teacher.identity, "dim": teacher.dim}}


def save_student(path: str | Path, student: UTAStudent, teacher: Teacher, teacher_spec: str,
                 info: dict[str, Any]) -> None:
    """Write student.safetensors + uta.json into ``path`` (created if missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / WEIGHTS, save_tensors(student.state_dict()))
    atomic_write_json(path / CONFIG, student_record(student, teacher, teacher_spec, info))


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
    if "name" not in config["student"]:
        raise UserError(f"{path} holds a student of an older vlalign (its own ViT, before the "
                        "timm EVA-02 student); retrain it with `vlalign train uta`")
    student = UTAStudent(StudentConfig(**config["student"]))
    student.load_state_dict(load_tensors(path / WEIGHTS))
    preprocess = Preprocess.from_dict(config["preprocess"])
    return student.eval(), preprocess, config
