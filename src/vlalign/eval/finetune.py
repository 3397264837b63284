"""Classifiers on a UTA student: a linear probe on its frozen features, or full fine-tuning.

``linear``: the student's pooled features (final-norm CLS, before the projection head) of every
training and test image, then the evaluation suite's linear probe (``eval/linear_probe.py``:
standardised features, L-BFGS logistic regression, weight decay chosen on a held-out split).
``full``: the student and a new linear classifier trained together on the training engine
(resumable, clipped, guarded) the way EVA-02 fine-tunes (``EVA-02/asuka/run_class_finetuning.py``
and ``optim_factory.py`` in baaivision/EVA): AdamW with layer-wise lr decay (``layer_decay``),
stochastic depth (``drop_path``), label-smoothed cross-entropy (``label_smoothing``), a cosine
schedule with warm-up, optional augmentation, optionally at another resolution (``img_size``:
timm resamples the position table and the RoPE grid, and the images are preprocessed at that
size). The run exports ``classifier.safetensors`` + ``classifier.json`` (the student's config at
its fine-tuned size, the preprocessing, the classes; ``load_classifier``), and the reported top-1
accuracy on the test set is that saved classifier's.
``from_scratch`` uses the same architecture from random initialisation: the baseline a UTA
initialisation must beat, ideally for the same ``time_budget_s``. Batches are pure functions of
(seed, step), as in UTA training, and so are drop path's random draws (an RNG seeded by
(seed, step, rank) for each step): a resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vlalign.backbones.base import Preprocess
from vlalign.config import setting, to_dict, validate
from vlalign.data import Source, create_source
from vlalign.data.templates import templates_for
from vlalign.errors import UserError
from vlalign.eval import linear_probe
from vlalign.models import CLIPLikeModel, load_model
from vlalign.train.config import OptimConfig, TrainSettings
from vlalign.train.loop import fit
from vlalign.train.optim import set_lr_scale
from vlalign.train.run import RunDir
from vlalign.train.task import StepOutput, Task
from vlalign.train.trackers import check_trackers
from vlalign.uta.artifact import load_student
from vlalign.uta.data import ImageRows, StepBatches, collate
from vlalign.uta.student import StudentConfig, UTAStudent
from vlalign.utils.checkpoint import load_tensors, save_tensors
from vlalign.utils.distributed import resolve_device
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json

MODES = ("linear", "full")
HEAD_INITS = ("zeroshot", "zeros")
SCALE_IMAGES = 64  # training images whose projected CLS norm sets the zero-shot head's scale
WEIGHTS, RECORD = "classifier.safetensors", "classifier.json"  # what full mode exports


@dataclass
class FinetuneConfig(TrainSettings):
    """How to train the classifier (``full``, on the training engine) and on what (both).

    "EVA-02" marks the values of EVA-02's ImageNet-1K fine-tuning of its MIM-pre-trained ViT-B
    (baaivision/EVA, ``EVA-02/asuka/README.md``, "Fine-tune MIM pre-trained eva02_B_pt_in21k_p14
    on IN-1K", and ``run_class_finetuning.py``'s defaults); "ours" marks values changed for a
    small student trained for minutes on a CPU.
    """

    mode: str = setting("linear", choices=MODES)
    from_scratch: bool = False  # random initialisation of the same architecture (the baseline)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        name="adamw",  # EVA-02: AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.05
        lr=1e-4,  # EVA-02-B (at batch 1024); see docs/uta.md for 5e-4 against 1e-4 here
        weight_decay=0.05, beta2=0.999,
        warmup_fraction=0.1,  # EVA-02-B: 3 of 30 epochs, from lr 0, cosine to 0
        grad_clip=1.0))  # ours (EVA-02 does not clip)
    # lr x layer_decay^(depth + 1 - layer), layer 0 the patch embedding, CLS and positions, i + 1
    # block i, depth + 1 the final norm and the classifier; 1 = off. EVA-02-B 0.7 (Ti 0.9, S and
    # L 0.8)
    layer_decay: float = setting(0.7, above=0.0)
    drop_path: float = setting(0.1, minimum=0.0)  # stochastic depth at the last block: EVA-02-B
    # 0.1 (L 0.15), rising linearly from 0 at the first
    label_smoothing: float = setting(0.1, minimum=0.0)  # EVA-02-B 0.1 (L 0.2)
    # the classifier layer's start: zeroshot = the zero-shot classifier through the student's
    # projection head and its teacher's text side (CLIP fine-tuning recipes, e.g. WiSE-FT and
    # FLYP, start from the zero-shot head), so fine-tuning starts at the zero-shot accuracy;
    # zeros = no class knowledge. From scratch always starts at zeros
    head_init: str = setting("zeroshot", choices=HEAD_INITS)
    # fine-tune (and test) at img_size x img_size, a multiple of the patch size; 0 = the student's
    # own. EVA-02 pre-trains at 224 and fine-tunes at 448 (Ti and S at 336)
    img_size: int = setting(0, minimum=0)
    batch_size: int = setting(64, minimum=1)  # ours (EVA-02: 1024)
    epochs: float = setting(10.0, above=0.0)  # ours (EVA-02-B: 30)
    checkpoint_every: int = setting(50, minimum=1)
    # random resized crop (area 0.5-1) + flip while fine-tuning: ours (EVA-02: RandAugment
    # rand-m9-mstd0.5-inc1, crop area 0.08-1; mixup, cutmix and random erasing off)
    augment: bool = True
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

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's layer grouping for layer-wise lr decay, numbered as EVA-02 numbers it
        (``get_num_layer_for_vit``): 0 the stem (patch embedding, CLS, positions, a mask
        token), i + 1 block i, and the unmatched rest (final norm, classifier) the last layer.
        timm's own ``Eva.group_matcher`` would merge the final norm into the last block."""
        trunk = r"^student\.trunk\."
        return {"stem": rf"{trunk}(?:cls_token|pos_embed|patch_embed)|^student\.mask_token",
                "blocks": rf"{trunk}blocks\.(\d+)"}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.student.forward_features(pixels))


def layer_decay_scales(classifier: Classifier, decay: float) -> dict[str, float]:
    """EVA-02's layer-wise lr scale of every trainable parameter, by name:
    ``decay ** (depth + 1 - layer)`` (timm's ``param_groups_layer_decay`` on the classifier's
    ``group_matcher``)."""
    groups = param_groups_layer_decay(classifier, layer_decay=decay)
    scales = {id(param): group["lr_scale"] for group in groups for param in group["params"]}
    return {name: scales[id(param)] for name, param in classifier.named_parameters()
            if param.requires_grad}


@torch.no_grad()
def zeroshot_head(classifier: Classifier, model: CLIPLikeModel, rows: ImageRows,
                  class_names: list[str], templates: list[str], device: torch.device) -> None:
    """Set the classifier layer to the zero-shot classifier: logits = s x (W_h CLS + b_h) . t_c,
    with (W_h, b_h) the student's projection head and t_c the class embeddings of the teacher's
    text side. Zero-shot classification divides each image's logits by one positive number (its
    embedding's norm), so the argmax is the same; s = 100 / the mean norm of the projected CLS on
    a few training images puts the logits on the scale of 100 x cosine."""
    student = classifier.student
    was_training = student.training
    student.eval()
    batch = collate([rows[(0, i)] for i in range(min(len(rows), SCALE_IMAGES))])
    scale = 100 / student(batch["pixels"].to(device)).cls.float().norm(dim=-1).mean()
    classes = model.class_embeddings(class_names, templates).to(device)
    head = student.head
    classifier.fc.weight.copy_(scale * classes @ head.weight.float())
    classifier.fc.bias.copy_(scale * classes @ head.bias.float())
    student.train(was_training)


def load_classifier(path: str | Path) -> tuple[Classifier, Preprocess, dict[str, Any]]:
    """A classifier exported by full fine-tuning (eval mode), the preprocessing it was trained
    with (at its fine-tuned size) and its record (student config, classes)."""
    path = Path(path)
    if not (path / RECORD).exists() or not (path / WEIGHTS).exists():
        raise UserError(f"{path} holds no fine-tuned classifier: expected {RECORD} and "
                        f"{WEIGHTS} (the --out folder of a `vlalign finetune --mode full` run)")
    record = read_json(path / RECORD)
    classifier = Classifier(UTAStudent(StudentConfig(**record["student"])),
                            len(record["classes"]))
    classifier.load_state_dict(load_tensors(path / WEIGHTS))
    return classifier.eval(), Preprocess.from_dict(record["preprocess"]), record


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


@contextmanager
def _seeded(device: torch.device, *key: int) -> Iterator[None]:
    """Inside, torch's RNG (CPU and ``device``) is seeded by ``key``; restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))
        yield


class CrossEntropy(nn.Module):
    """Classifier + loss: a labelled batch -> this rank's share of the cross-entropy, with
    ``label_smoothing`` (``F.cross_entropy``'s). A batch that carries its ``step`` runs in
    training with the RNG seeded by (seed, step, rank): drop path draws the same masks when a
    run is resumed."""

    def __init__(self, classifier: Classifier, world_size: int = 1, label_smoothing: float = 0.0,
                 seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        self.classifier, self.world_size = classifier, world_size
        self.label_smoothing, self.seed, self.rank = label_smoothing, seed, rank

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        pixels = batch["pixels"]
        rng = (_seeded(pixels.device, self.seed, batch["step"], self.rank)
               if self.training and "step" in batch else nullcontext())
        with rng:
            logits = self.classifier(pixels)
        loss = F.cross_entropy(logits.float(), batch["label"],
                               label_smoothing=self.label_smoothing)
        return StepOutput(loss / self.world_size)


class FinetuneTask(Task):
    """Cross-entropy training of the whole classifier on labelled images."""

    name, unit = "finetune", "img"

    def __init__(self, classifier: Classifier, rows: ImageRows, config: FinetuneConfig,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.classifier, self.rows, self.config, self.device = classifier, rows, config, device
        self.module = CrossEntropy(classifier, world_size, config.label_smoothing, config.seed,
                                   rank)
        self.stream = StepBatches(len(rows), config.batch_size, config.seed, rank, world_size)
        self.steps_per_epoch, self.samples_per_step = self.stream.steps_per_epoch, config.batch_size

    def batches(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        loader = DataLoader(self.rows, batch_sampler=self.stream.span(start, stop),
                            collate_fn=collate, num_workers=self.config.num_workers)
        for step, batch in enumerate(loader, start):
            yield {"pixels": batch["pixels"].to(self.device, non_blocking=True),
                   "label": batch["label"].to(self.device), "bad": batch["bad"], "step": step}

    def identity(self) -> dict[str, Any]:
        return {"student": self.classifier.student.config.to_dict(),
                "classes": self.classifier.fc.out_features,
                "from_scratch": self.config.from_scratch,
                "layer_decay": self.config.layer_decay,  # the optimiser's groups
                "head_init": self.config.head_init}

    def no_weight_decay(self) -> set[str]:
        return {f"classifier.{name}" for name in self.classifier.no_weight_decay()}

    def batch_metrics(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"bad_items": batch["bad"]}

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        atomic_write_bytes(run_dir / WEIGHTS, save_tensors(self.classifier.state_dict()))
        atomic_write_json(run_dir / RECORD, {
            **info, "student": self.classifier.student.config.to_dict(),
            "classes": self.rows.sources[0].class_names,
            "preprocess": self.rows.preprocess.to_dict()})


def finetune(model: str | Path, train: str, test: str, config: FinetuneConfig,
             out: Path | None = None, progress: bool = True, resume: bool = False,
             max_steps: int | None = None) -> dict[str, Any]:
    """Train and test a classifier on the student of ``model`` (a UTA run or saved model);
    returns (and writes to ``out``/finetune.json) the test metrics and the settings. ``full``
    mode trains in ``out`` (a run folder: checkpoints, metrics, ``resume``), or in a temporary
    folder without ``out``."""
    validate(config)
    if config.drop_path >= 1 or config.label_smoothing > 1:
        raise UserError(f"drop_path must be below 1 and label_smoothing at most 1, got "
                        f"{config.drop_path} and {config.label_smoothing}")
    check_trackers(config.report_to)
    if resume and out is None:
        raise UserError("--resume needs the --out folder of the fine-tuning run to continue")
    device = resolve_device(config.device)
    student, preprocess, _ = load_student(model)
    if config.from_scratch:
        torch.manual_seed(config.seed)
        student = UTAStudent(student.config)
    if config.img_size and config.img_size != student.config.img_size:
        if config.img_size % student.config.patch_size:
            raise UserError(f"img_size {config.img_size} is not a multiple of the student's "
                            f"patch size {student.config.patch_size}")
        student.set_input_size(config.img_size)
    preprocess = preprocess.with_size(student.config.img_size)
    student = student.to(device)
    train_source, test_source = (_labelled(s, config.data_root) for s in (train, test))
    if test_source.class_names != train_source.class_names:
        raise UserError(f"{train} and {test} have different classes")
    record: dict[str, Any] = {"model": str(model), "train": train, "test": test,
                              "img_size": student.config.img_size, "settings": to_dict(config)}
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
            student.set_drop_path(config.drop_path)
            classifier = Classifier(student, len(train_source.class_names)).to(device)
            if config.head_init == "zeroshot" and not config.from_scratch:  # resume overwrites
                zeroshot_head(classifier, load_model(model, device=str(device)),
                              ImageRows([train_source], preprocess),
                              train_source.class_names, templates_for(train), device)
            for name, scale in layer_decay_scales(classifier, config.layer_decay).items():
                set_lr_scale(classifier.get_parameter(name), scale)
            augment_seed = config.seed if config.augment else None
            rows = ImageRows([train_source], preprocess, None, augment_seed)
            last = fit(FinetuneTask(classifier, rows, config, device), config, run,
                       record, progress=progress, max_steps=max_steps)
            tuned, tuned_preprocess, _ = load_classifier(run.path)  # what the run saved
            logits, labels = _embed(tuned.to(device), ImageRows([test_source], tuned_preprocess),
                                    config.batch_size, device, progress)
        record["metrics"] = {"acc1": (logits.argmax(dim=1) == labels).float().mean().item(),
                             "steps": last.get("step", 0), "train_s": last.get("train_s", 0.0)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "finetune.json", record)
    return record
