"""SAIL training on stored features: the SAIL task for the training engine (``vlalign.train``).

The run directory is the engine's (config, metrics, checkpoints), and at the end
``heads.safetensors`` + ``heads.json`` (what `vlalign.load_model` reads). Under torchrun every
rank reads its slice of each global batch and the loss sees the global batch's negatives
(losses.py). Before the first step the stores are checked (sha256 of every shard, shared among
the ranks; validation stores must come from the same backbones), so a bad input fails in seconds
with one line rather than hours later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.config import to_dict, validate
from vlalign.errors import StoreError, UserError
from vlalign.sail.artifact import AlignmentHeads, BackboneRecord, HeadsConfig
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.heads import create_head, xavier_init_
from vlalign.sail.losses import create_loss
from vlalign.store.layout import transform_difference
from vlalign.store.reader import FeatureStore
from vlalign.store.stream import Batch, BatchStream, ResidentRows, StoreMix
from vlalign.train.loop import fit
from vlalign.train.run import RunDir
from vlalign.train.task import StepOutput, Task
from vlalign.train.trackers import check_trackers
from vlalign.utils.distributed import init_from_env, raise_if_any_failed, resolve_device

log = logging.getLogger(__name__)

Evaluator = Callable[["SailModule", int], dict[str, float]]


class SailModule(nn.Module):
    """The trainable part of SAIL: one head per modality plus the loss's scale and bias."""

    def __init__(self, config: SailConfig, image_dim: int, text_dim: int, rank: int = 0,
                 world_size: int = 1, kinds: list[str] | None = None):
        super().__init__()
        self.vision_head = _head(config.vision_head, image_dim, config.embed_dim)
        self.text_head = _head(config.text_head, text_dim, config.embed_dim)
        self.kinds = list(config.positives if kinds is None else kinds)  # the positives used
        extra = {"save_grads": True} if config.loss_save_grads else {}
        self.loss = create_loss(config.loss, block_size=config.loss_block_size, rank=rank,
                                world_size=world_size, **extra)

    def encode_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings from backbone features."""
        return F.normalize(self.vision_head(x).float(), dim=-1)

    def encode_text_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings from backbone features."""
        return F.normalize(self.text_head(x).float(), dim=-1)

    def forward(self, batch: Batch) -> StepOutput:
        """The loss share and one term per caption kind for a batch of stored features."""
        # one text-head pass over every caption kind stacked: fewer, larger GEMMs
        stacked = self.encode_text_features(torch.cat(batch.texts))  # (kinds * b, d)
        texts = dict(zip(self.kinds, stacked.chunk(len(batch.texts)), strict=True))
        return StepOutput(*self.loss(self.encode_image_features(batch.images), texts))


def _head(config: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    options = ({"width_factor": config.width_factor} if config.kind == "glu"
               else {"norm": config.norm} if config.kind == "linear" else {})
    head = create_head(config.kind, in_dim, out_dim, **options)
    return xavier_init_(head) if config.init == "xavier" else head


def _check_stores(config: SailConfig, stores: list[FeatureStore], rank: int,
                  world_size: int) -> None:
    """Fail up front, on every rank, on a corrupt shard or a validation store that does not
    match the training stores' backbones (its features would not fit the heads)."""
    error = None
    try:
        for path in config.val_stores:
            val = FeatureStore(path)
            if val.backbones != stores[0].backbones:
                raise StoreError(f"validation store {path} was encoded with {val.backbones}, "
                                 f"the training store with {stores[0].backbones}; they must "
                                 "match")
            difference = transform_difference(val.transform, stores[0].transform,
                                              ("validation", "training"))
            if difference:
                raise StoreError(f"validation store {path} holds features of another image "
                                 f"transform than the training store ({difference})")
        if config.verify_stores:
            for store in stores:
                store.verify(rank, world_size)
    except UserError as caught:
        error = caught
    raise_if_any_failed(error)


def export_heads(module: SailModule, run_dir: Path, config: SailConfig,
                 store: FeatureStore, step: int) -> None:
    """Write heads.safetensors (with the loss's scale and bias) + heads.json: the trained part
    of a SAIL model."""
    manifest = store.manifest
    heads_config = HeadsConfig(
        vision_head=module.vision_head.config, text_head=module.text_head.config,
        vision=BackboneRecord.from_dict(manifest["vision"]),
        text=BackboneRecord.from_dict(manifest["text"]), method="sail", step=step,
        embed_dim=config.embed_dim, loss=config.loss, positives=list(module.kinds))
    heads = AlignmentHeads(module.vision_head, module.text_head, heads_config)
    heads.save_pretrained(run_dir, extra={f"loss.{k}": v
                                          for k, v in module.loss.state_dict().items()})


class SailTask(Task):
    """SAIL heads on stored features: batches from the store, the contrastive loss, heads out."""

    name, unit = "train sail", "pairs"

    def __init__(self, config: SailConfig, rank: int, world_size: int) -> None:
        self.config = config
        self.stores = [FeatureStore(p) for p in config.train_stores]
        data = StoreMix(self.stores)
        # Train on the caption kinds the stores really hold (a source without rewritten
        # captions must not give the raw caption twice); heads.json records them.
        kinds, notes = data.usable_kinds(config.positives)
        for note in notes if rank == 0 else ():
            log.warning(note)
        _check_stores(config, self.stores, rank, world_size)
        self.device = resolve_device(config.device)
        cuda = self.device.type == "cuda"
        resident = ResidentRows(data, kinds, self.device) if config.data_on_device else None
        self.stream = BatchStream(data, config.batch_size, kinds, config.seed, rank, world_size,
                                  prefetch=2 if cuda and resident is None else 0,
                                  pin_memory=cuda, resident=resident)
        self.steps_per_epoch, self.samples_per_step = self.stream.steps_per_epoch, config.batch_size
        torch.manual_seed(config.seed)
        self.module = SailModule(config, data.image_dim, data.text_dim, rank, world_size, kinds)
        self.module.to(self.device)

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        for batch in self.stream.iterate(start, stop):
            yield batch.to(self.device, torch.float32)  # stored float16 holds exactly

    def identity(self) -> dict[str, Any]:
        return {"vision_head": self.module.vision_head.config,
                "text_head": self.module.text_head.config, "loss": self.config.loss,
                "positives": self.module.kinds}

    def watched_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters: the loss's scale and bias move even when the heads cannot."""
        heads = (self.module.vision_head, self.module.text_head)
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def after_step(self) -> None:
        """Keep the logit scale within its bounds, as the official trainer does."""
        self.module.loss.clamp_scale_()

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        export_heads(self.module, run_dir, self.config, self.stores[0], step)


def train_sail(config: SailConfig, run_dir: Path, resume: bool = False,
               evaluate: Evaluator | None = None, progress: bool = True,
               max_steps: int | None = None) -> dict[str, Any]:
    """Train SAIL heads on stored features; returns the last logged metrics.

    ``evaluate(module, step)`` runs at ``eval_every`` and at the end; ``max_steps`` stops early
    (the schedule still spans the full run), for tests and demos.
    """
    validate(config)
    check_trackers(config.report_to)
    rank, world_size = init_from_env()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run = RunDir(Path(run_dir), resume)
    task = SailTask(config, rank, world_size)
    hook = None if evaluate is None else (lambda step: evaluate(task.module, step))
    return fit(task, config, run, to_dict(config), evaluate=hook, progress=progress,
               max_steps=max_steps)
