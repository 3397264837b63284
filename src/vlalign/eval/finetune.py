"""Classifiers on a UTA student: a linear probe on its frozen features, or full fine-tuning.

``linear``: the student's pooled features (final-norm CLS, before the projection head) of every
training and test image, then the evaluation suite's linear probe (``eval/linear_probe.py``:
standardised features, L-BFGS logistic regression, weight decay chosen on a held-out split).
``full``: the student and a new linear classifier trained together with cross-entropy (AdamW,
cosine schedule with warm-up, optional augmentation), then top-1 accuracy on the test set.
``from_scratch`` uses the same architecture from random initialisation: the baseline a UTA
initialisation must beat, ideally for the same ``time_budget_s``. Batches are pure functions of
(seed, step), as in UTA training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vlalign.data import Source, create_source
from vlalign.errors import UserError
from vlalign.eval import linear_probe
from vlalign.sail.config import OptimConfig
from vlalign.sail.optim import cosine_lr
from vlalign.uta.data import ImageRows, StepBatches, collate
from vlalign.uta.model import load_student
from vlalign.uta.student import UTAStudent
from vlalign.uta.train import create_optimizer
from vlalign.utils.checkpoint import save_tensors
from vlalign.utils.files import atomic_write_bytes, atomic_write_json
from vlalign.utils.precision import autocast_dtype
from vlalign.utils.training import resolve_device, step_limit

MODES = ("linear", "full")


@dataclass
class FinetuneConfig:
    """How to train the classifier (``full``) and on what (both modes)."""

    mode: str = "linear"  # linear | full
    from_scratch: bool = False  # random initialisation of the same architecture (the baseline)
    epochs: float = 10.0
    time_budget_s: float = 0.0  # > 0: train this long instead of `epochs` (schedule in time)
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    augment: bool = True  # random resized crop + flip while fine-tuning
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (see utils/precision)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
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


def _train_full(classifier: Classifier, rows: ImageRows, config: FinetuneConfig,
                device: torch.device, progress: bool) -> dict[str, Any]:
    """Cross-entropy training of the whole classifier; returns steps and training seconds."""
    stream = StepBatches(len(rows), config.batch_size, config.seed)
    total = max(1, int(config.epochs * stream.steps_per_epoch))
    budget = config.time_budget_s
    stop = step_limit(total, budget)
    optimizer = create_optimizer(classifier, OptimConfig(
        name="adamw", lr=config.lr, weight_decay=config.weight_decay, beta2=0.999))
    autocast = autocast_dtype(config.precision, device)
    loader = DataLoader(rows, batch_sampler=stream.span(0, stop), collate_fn=collate,
                        num_workers=config.num_workers)
    classifier.train()
    train_s, steps = 0.0, 0
    started = time.perf_counter()
    bar = tqdm(total=None if budget else stop, disable=not progress, unit="step",
               desc="finetune", dynamic_ncols=True)
    for step, batch in enumerate(loader):
        at, span = (int(train_s / budget * 100_000), 100_000) if budget else (step, total)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(at, span, config.lr, config.warmup_fraction)
        with torch.autocast(device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            logits = classifier(batch["pixels"].to(device))
        loss = F.cross_entropy(logits.float(), batch["label"].to(device))
        if not torch.isfinite(loss):
            raise UserError(f"fine-tuning diverged: loss {loss.item()} at step {step}; "
                            "lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, train_s = step + 1, time.perf_counter() - started
        bar.update(1)
        if budget and train_s >= budget:
            break
    bar.close()
    classifier.eval()
    return {"steps": steps, "train_s": round(train_s, 2)}


def finetune(model: str | Path, train: str, test: str, config: FinetuneConfig,
             out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train and test a classifier on the student of ``model`` (a UTA run or saved model);
    returns (and writes to ``out``/finetune.json) the test metrics and the settings."""
    if config.mode not in MODES:
        raise UserError(f"unknown mode {config.mode!r}; valid: {', '.join(MODES)}")
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
                              "settings": asdict(config)}
    classifier = None
    if config.mode == "linear":
        rows = [ImageRows([s], preprocess) for s in (train_source, test_source)]
        (train_x, train_y), (test_x, test_y) = (
            _embed(student.eval().forward_features, r, config.batch_size, device, progress)
            for r in rows)
        record["metrics"] = linear_probe.evaluate(train_x, train_y, test_x, test_y)
    else:
        classifier = Classifier(student, len(train_source.class_names)).to(device)
        augment_seed = config.seed if config.augment else None
        fit = _train_full(classifier, ImageRows([train_source], preprocess, None, augment_seed),
                          config, device, progress)
        logits, labels = _embed(classifier, ImageRows([test_source], preprocess),
                                config.batch_size, device, progress)
        record["metrics"] = {"acc1": (logits.argmax(dim=1) == labels).float().mean().item(),
                             **fit}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if classifier is not None:
            atomic_write_bytes(out / "classifier.safetensors",
                               save_tensors(classifier.state_dict()))
        atomic_write_json(out / "finetune.json", record)
    return record
