"""SAIL training on stored features: the whole loop on one screen.

Run directory: ``config.json`` (resolved recipe), ``metrics.jsonl`` (one line per logged step),
``ckpt-*.safetensors/json`` + ``latest.json`` (atomic checkpoints), and at the end
``heads.safetensors`` + ``heads.json`` (what `vlalign.load_model` reads).
Under torchrun every rank reads its slice of each global batch; the loss sees the global
batch's negatives (see losses.py) and gradients are summed across ranks.

Before the first step the stores are checked (sha256 of every shard, shared among the ranks;
validation stores must come from the same backbones; a resumed checkpoint must fit the heads),
so a bad input fails in seconds with one line rather than hours later or silently. A loss or
gradient that is not finite stops the run on every rank, keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vlalign.config import to_dict
from vlalign.errors import StoreError, UserError
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.distributed import all_reduce_sum, sum_gradients, world_info
from vlalign.sail.heads import create_head
from vlalign.sail.losses import create_loss
from vlalign.sail.optim import cosine_lr, create_optimizer
from vlalign.store.reader import FeatureStore
from vlalign.store.stream import BatchStream, StoreMix
from vlalign.utils.checkpoint import (
    flatten_optimizer,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    save_tensors,
)
from vlalign.utils.distributed import init_from_env, on_rank_zero, raise_if_any_failed
from vlalign.utils.files import atomic_write_bytes, atomic_write_json
from vlalign.utils.precision import autocast_dtype, resolve_precision
from vlalign.utils.training import (
    check_finite,
    refuse_overwrite,
    resolve_device,
    trim_metrics,
)

log = logging.getLogger(__name__)
Evaluator = Callable[["SailModule", int], dict[str, float]]

class SailModule(nn.Module):
    """The trainable part of SAIL: one head per modality plus the loss's scale and bias."""

    def __init__(self, config: SailConfig, image_dim: int, text_dim: int):
        super().__init__()
        self.vision_head = _head(config.vision_head, image_dim, config.embed_dim)
        self.text_head = _head(config.text_head, text_dim, config.embed_dim)
        rank, world_size = world_info()
        self.loss = create_loss(config.loss, block_size=config.loss_block_size, rank=rank,
                                world_size=world_size)

    def encode_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings from backbone features."""
        return F.normalize(self.vision_head(x).float(), dim=-1)

    def encode_text_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings from backbone features."""
        return F.normalize(self.text_head(x).float(), dim=-1)

    def forward(self, images: torch.Tensor, texts: dict[str, torch.Tensor]):
        """(total loss, named terms) for image features and one text matrix per caption kind."""
        return self.loss(self.encode_image_features(images),
                         {kind: self.encode_text_features(t) for kind, t in texts.items()})


def _head(config: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    options = {"width_factor": config.width_factor} if config.kind == "glu" else {}
    return create_head(config.kind, in_dim, out_dim, **options)


def _global_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss and its terms summed over ranks (shares -> global values) in one all_reduce."""
    named = {"loss": loss, **terms}
    values = all_reduce_sum(torch.stack([v.detach().float() for v in named.values()]))
    return dict(zip(named, values))


def _check_stores(config: SailConfig, stores: list[FeatureStore], rank: int,
                  world_size: int) -> None:
    """Fail up front, on every rank, on a corrupt shard or a validation store that does not
    match the training stores' backbones (its features would not fit the heads)."""
    error = None
    try:
        for path in config.val_stores:
            found = FeatureStore(path).backbones
            if found != stores[0].backbones:
                raise StoreError(f"validation store {path} was encoded with {found}, the "
                                 f"training store with {stores[0].backbones}; they must match")
        if config.verify_stores:
            for store in stores:
                store.verify(rank, world_size)
    except UserError as caught:
        error = caught
    raise_if_any_failed(error)


def _check_fits(module: nn.Module, tensors: dict[str, torch.Tensor], run_dir: Path) -> None:
    """UserError if a checkpoint's weights do not have the shapes of this run's heads."""
    for name, param in module.state_dict().items():
        saved = tensors.get(f"model.{name}")
        if saved is None or saved.shape != param.shape:
            found = "missing" if saved is None else tuple(saved.shape)
            raise UserError(f"{run_dir}: checkpoint tensor {name} is {found}, this run needs "
                            f"{tuple(param.shape)} (different store dims or heads); "
                            "use another --out")


def export_heads(module: SailModule, run_dir: Path, config: SailConfig,
                 store: FeatureStore, step: int) -> None:
    """Write heads.safetensors + heads.json: the trained part of a SAIL model."""
    tensors = {f"vision_head.{k}": v for k, v in module.vision_head.state_dict().items()}
    tensors |= {f"text_head.{k}": v for k, v in module.text_head.state_dict().items()}
    tensors |= {f"loss.{k}": v for k, v in module.loss.state_dict().items()}
    atomic_write_bytes(run_dir / "heads.safetensors", save_tensors(tensors))
    manifest = store.manifest
    atomic_write_json(run_dir / "heads.json", {
        "method": "sail", "step": step, "embed_dim": config.embed_dim,
        "vision_head": module.vision_head.config, "text_head": module.text_head.config,
        "loss": config.loss,
        "vision": {k: manifest["vision"][k] for k in ("spec", "identity", "dim", "preprocess")},
        "text": {k: manifest["text"][k] for k in ("spec", "identity", "dim")},
    })


def train_sail(config: SailConfig, run_dir: Path, resume: bool = False,
               evaluate: Evaluator | None = None, progress: bool = True,
               max_steps: int | None = None) -> dict[str, Any]:
    """Train SAIL heads on stored features; returns the last logged metrics.

    ``max_steps`` stops early (the schedule still spans the full run), for tests and demos.
    """
    rank, world_size = init_from_env()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    run_dir = Path(run_dir)
    refuse_overwrite(run_dir, resume)
    stores = [FeatureStore(p) for p in config.train_stores]
    data = StoreMix(stores)
    data.kinds_available(config.positives)
    _check_stores(config, stores, rank, world_size)
    stream = BatchStream(data, config.batch_size, config.positives, config.seed, rank, world_size)
    total_steps = max(1, int(config.epochs * stream.steps_per_epoch))

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    module = SailModule(config, data.image_dim, data.text_dim).to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = create_optimizer(optim.name, params, optim.lr, optim.weight_decay,
                                 (optim.beta1, optim.beta2))
    start, last_good = 0, None
    checkpoint = load_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        tensors, info = checkpoint
        _check_fits(module, tensors, run_dir)
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        restore_optimizer(optimizer, tensors, info["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        start = last_good = info["step"]
        log.info("resuming %s from step %d", run_dir, start)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.tmp"):  # left by a kill mid-write; never read
            stale.unlink()
        atomic_write_json(run_dir / "config.json", to_dict(config))
        trim_metrics(run_dir / "metrics.jsonl", start)

    def save(step: int) -> None:
        opt_tensors, opt_info = flatten_optimizer(optimizer)
        tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
        tensors |= opt_tensors | {"rng.torch": torch.get_rng_state()}
        save_checkpoint(run_dir, step, tensors, {"optimizer": opt_info, "config": to_dict(config)})

    def checkpoint_now(step: int) -> None:
        nonlocal last_good
        on_rank_zero(lambda: save(step))  # a failed write (full disk) stops every rank
        last_good = step

    stop = total_steps if max_steps is None else min(total_steps, max_steps)
    autocast = autocast_dtype(config.precision, device)
    log.info("precision %s -> %s on %s", config.precision,
             resolve_precision(config.precision, device), device)
    bar = tqdm(total=stop, initial=start, disable=not progress or rank != 0, unit="step",
               desc="train sail", dynamic_ncols=True)
    metrics: dict[str, Any] = {}
    wait_start = time.perf_counter()
    with open(run_dir / "metrics.jsonl", "a") if rank == 0 else open("/dev/null", "w") as sink:
        for batch in stream.iterate(start, stop):
            step = batch.step
            data_time = time.perf_counter() - wait_start
            lr = cosine_lr(step, total_steps, config.optim.lr, config.optim.warmup_fraction,
                           config.optim.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            compute_start = time.perf_counter()
            images = batch.images.to(device, non_blocking=True)
            texts = {k: t.to(device, non_blocking=True) for k, t in zip(config.positives,
                                                                         batch.texts)}
            with torch.autocast(device.type, dtype=autocast or torch.float32,
                                enabled=autocast is not None):
                loss, terms = module(images, texts)
            reduced = _global_terms(loss, terms)
            check_finite(step, reduced, last_good)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world_size > 1:  # each rank's loss is its share: sum the gradients
                sum_gradients(params)
            grad_norm = nn.utils.clip_grad_norm_(params, config.optim.grad_clip or float("inf"))
            check_finite(step, {"gradient norm": grad_norm}, last_good)
            optimizer.step()
            compute_time = time.perf_counter() - compute_start
            done = step + 1
            evaluate_now = evaluate is not None and (
                done == stop or (config.eval_every and done % config.eval_every == 0))
            if done % config.log_every == 0 or done == stop or evaluate_now:
                metrics = {"step": done, "lr": lr, **{k: float(v) for k, v in reduced.items()},
                           "grad_norm": float(grad_norm),
                           "pairs_per_s": config.batch_size / max(1e-9, data_time + compute_time),
                           "data_s": round(data_time, 4), "compute_s": round(compute_time, 4)}
                if evaluate_now and rank == 0:
                    metrics |= {f"val/{k}": v for k, v in evaluate(module, done).items()}
                sink.write(json.dumps(metrics) + "\n")
                sink.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if done % config.checkpoint_every == 0 or done == stop:
                checkpoint_now(done)
            bar.update(1)
            wait_start = time.perf_counter()
    bar.close()
    on_rank_zero(lambda: export_heads(module, run_dir, config, stores[0], stop))
    return metrics

