"""Classifiers on a UTA student: a linear probe on its frozen features, or full fine-tuning.

``linear``: the student's pooled features (final-norm CLS, before the projection head) of every
training and test image, then the evaluation suite's linear probe (``eval/linear_probe.py``:
standardised features, L-BFGS logistic regression, weight decay chosen on a held-out split).
``full``: the student and a new linear classifier trained together with cross-entropy on the
training engine (AdamW, cosine schedule with warm-up, clipping, the guards, resumable; optional
augmentation), then top-1 accuracy on the test set.
``from_scratch`` uses the same architecture from random initialisation: the baseline a UTA
initialisation must beat, ideally for the same ``time_budget_s``. Batches are pure functions of
(seed, step), as in UTA training.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vlalign.config import setting, to_dict, validate
from vlalign.data import Source, create_source
from vlalign.errors import UserError
from vlalign.eval import linear_probe
from vlalign.train.config import OptimConfig, TrainSettings
from vlalign.train.loop import fit
from vlalign.train.run import RunDir
from vlalign.train.task import StepOutput, Task
from vlalign.train.trackers import check_trackers
from vlalign.uta.artifact import load_student
from vlalign.uta.data import ImageRows, StepBatches, collate
from vlalign.uta.student import UTAStudent
from vlalign.utils.checkpoint import save_tensors
from vlalign.utils.distributed import resolve_device
from vlalign.utils.files import atomic_write_bytes, atomic_write_json

MODES = ("linear", "full")


@dataclass
class FinetuneConfig(TrainSettings):
    """How to train the classifier (``full``, on the training engine) and on what (both)."""

    mode: str = setting("linear", choices=MODES)
    from_scratch: bool = False  # random initialisation of the same architecture (the baseline)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw", lr=5e-4, weight_decay=0.05, beta2=0.999, warmup_fraction=0.1,
        grad_clip=1.0))
    batch_size: int = setting(64, minimum=1)
    epochs: float = setting(10.0, above=0.0)
    checkpoint_every: int = setting(50, minimum=1)
    augment: bool = True  # random resized crop + flip while fine-tuning
    num_workers: int = setting(0, minimum=0)
    data_root: str = "data"


class Classifier(nn.Module):
    """Student features -> class logits."""

    def __init__(self, student: UTAStudent, num_classes: int) -> None:
        super().__init__()
        self.student = student
        self.fc = nn.Linear(student.config.dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {f"student.{name}" for name in self.student.no_weight_decay()}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.student.forward_features(pixels))


def _labelled(spec: str, data_root: str) -> Source:
    source = create_source(spec, data_root)
    if not source.class_names:
        raise UserError(f"{spec}: fine-tuning needs a labelled dataset (with class names)")
    return source


@torch.no_grad()  # not inference mode: the linear probe fits on these tensors
def _embed(network: nn.Module, rows: ImageRows, batch_size: int, device: torch.device,
           progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``network(pixels)`` of every readable row in order, and the rows' labels."""
    keys = [[(0, i) for i in range(start, min(len(rows), start + batch_size))]
            for start in range(0, len(rows), batch_size)]
    outputs, labels = [], []
    for batch in tqdm(DataLoader(rows, batch_sampler=keys, collate_fn=collate), unit="batch",
                      disable=not progress, desc="embed", dynamic_ncols=True):
        outputs.append(network(batch["pixels"].to(device)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(outputs), torch.cat(labels)


class CrossEntropy(nn.Module):
    """Classifier + loss: a labelled batch -> this rank's share of the cross-entropy."""

    def __init__(self, classifier: Classifier, world_size: int = 1) -> None:
        super().__init__()
        self.classifier, self.world_size = classifier, world_size

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        logits = self.classifier(batch["pixels"])
        return StepOutput(F.cross_entropy(logits.float(), batch["label"]) / self.world_size)


class FinetuneTask(Task):
    """Cross-entropy training of the whole classifier on labelled images."""

    name, unit = "finetune", "img"

    def __init__(self, classifier: Classifier, rows: ImageRows, config: FinetuneConfig,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.classifier, self.rows, self.config, self.device = classifier, rows, config, device
        self.module = CrossEntropy(classifier, world_size)
        self.stream = StepBatches(len(rows), config.batch_size, config.seed, rank, world_size)
        self.steps_per_epoch, self.samples_per_step = self.stream.steps_per_epoch, config.batch_size

    def batches(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        loader = DataLoader(self.rows, batch_sampler=self.stream.span(start, stop),
                            collate_fn=collate, num_workers=self.config.num_workers)
        for batch in loader:
            yield {"pixels": batch["pixels"].to(self.device, non_blocking=True),
                   "label": batch["label"].to(self.device), "bad": batch["bad"]}

    def identity(self) -> dict[str, Any]:
        return {"student": self.classifier.student.config.to_dict(),
                "classes": self.classifier.fc.out_features,
                "from_scratch": self.config.from_scratch}

    def no_weight_decay(self) -> set[str]:
        return {f"classifier.{name}" for name in self.classifier.no_weight_decay()}

    def batch_metrics(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"bad_items": batch["bad"]}

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        atomic_write_bytes(run_dir / "classifier.safetensors",
                           save_tensors(self.classifier.state_dict()))


def finetune(model: str | Path, train: str, test: str, config: FinetuneConfig,
             out: Path | None = None, progress: bool = True, resume: bool = False,
             max_steps: int | None = None) -> dict[str, Any]:
    """Train and test a classifier on the student of ``model`` (a UTA run or saved model);
    returns (and writes to ``out``/finetune.json) the test metrics and the settings. ``full``
    mode trains in ``out`` (a run folder: checkpoints, metrics, ``resume``), or in a temporary
    folder without ``out``."""
    validate(config)
    check_trackers(config.report_to)
    if resume and out is None:
        raise UserError("--resume needs the --out folder of the fine-tuning run to continue")
    device = resolve_device(config.device)
    student, preprocess, _ = load_student(model)
    if config.from_scratch:
        torch.manual_seed(config.seed)
        student = UTAStudent(student.config)
    student = student.to(device)
    train_source, test_source = (_labelled(s, config.data_root) for s in (train, test))
    if test_source.class_names != train_source.class_names:
        raise UserError(f"{train} and {test} have different classes")
    record: dict[str, Any] = {"model": str(model), "train": train, "test": test,
                              "settings": to_dict(config)}
    if config.mode == "linear":
        rows = [ImageRows([s], preprocess) for s in (train_source, test_source)]
        (train_x, train_y), (test_x, test_y) = (
            _embed(student.eval().forward_features, r, config.batch_size, device, progress)
            for r in rows)
        record["metrics"] = linear_probe.evaluate(train_x, train_y, test_x, test_y)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            run = RunDir(Path(out) if out is not None else Path(scratch), resume)
            torch.manual_seed(config.seed)
            classifier = Classifier(student, len(train_source.class_names)).to(device)
            augment_seed = config.seed if config.augment else None
            rows = ImageRows([train_source], preprocess, None, augment_seed)
            last = fit(FinetuneTask(classifier, rows, config, device), config, run,
                       record, progress=progress, max_steps=max_steps)
        logits, labels = _embed(classifier, ImageRows([test_source], preprocess),
                                config.batch_size, device, progress)
        record["metrics"] = {"acc1": (logits.argmax(dim=1) == labels).float().mean().item(),
                             "steps": last.get("step", 0), "train_s": last.get("train_s", 0.0)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "finetune.json", record)
    return record
