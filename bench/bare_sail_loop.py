"""SAIL training written plainly: the baseline ``bench/train_overhead.py`` times the engine against.

Everything in RAM: the stores' image features and caption features (the recipe's kinds) are
read once into float32 tensors, then ``--steps`` steps of the recipe's heads, loss, Lion,
warm-up + cosine schedule, gradient clipping and autocast dtype over one random permutation
per epoch (drop-last), and the heads saved with safetensors at the end. No checksums,
checkpoints, metrics file, prefetching or resume: only the work any training must do.

    .venv/bin/python bench/bare_sail_loop.py --store S1 --store S2 \
        --config configs/sail-offline.yaml --steps 110 --out /tmp/bare
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vlalign.config import load_config
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.heads import create_head
from vlalign.sail.losses import create_loss
from vlalign.store.reader import FeatureStore
from vlalign.train.optim import Lion, cosine_lr
from vlalign.train.precision import autocast_dtype


def load_features(paths: list[str], kinds: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All rows of the stores, concatenated: images (N x Di) and one N x Dt matrix per kind."""
    images, texts = [], []
    for path in paths:
        store = FeatureStore(path)
        rows = np.arange(len(store))
        images.append(store.images(rows).astype(np.float32))
        captions = store.texts(rows)
        texts.append([captions[:, store.caption_kinds.index(k)].astype(np.float32)
                      for k in kinds])
    return (torch.from_numpy(np.concatenate(images)),
            [torch.from_numpy(np.concatenate([t[j] for t in texts])) for j in range(len(kinds))])


def head(config: HeadConfig, in_dim: int, out_dim: int) -> torch.nn.Module:
    options = {"width_factor": config.width_factor} if config.kind == "glu" else {}
    return create_head(config.kind, in_dim, out_dim, **options)


def train(config: SailConfig, steps: int, out: Path) -> None:
    """``steps`` SAIL steps on the in-RAM features; the heads are written to ``out``."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    images, texts = load_features(config.train_stores, config.positives)
    torch.manual_seed(config.seed)
    vision = head(config.vision_head, images.shape[1], config.embed_dim)
    text = head(config.text_head, texts[0].shape[1], config.embed_dim)
    loss_fn = create_loss(config.loss, block_size=config.loss_block_size)
    params = [*vision.parameters(), *text.parameters(), *loss_fn.parameters()]
    opt = config.optim
    optimizer = Lion([{"params": [p for p in params if p.ndim >= 2],
                       "weight_decay": opt.weight_decay},
                      {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                     lr=opt.lr, betas=(opt.beta1, opt.beta2))
    dtype = autocast_dtype(config.precision, torch.device("cpu"))
    batch = config.batch_size
    steps_per_epoch = len(images) // batch
    generator = torch.Generator().manual_seed(config.seed)
    for step in range(steps):
        epoch_step = step % steps_per_epoch
        if epoch_step == 0:
            order = torch.randperm(len(images), generator=generator)
        rows = order[epoch_step * batch:(epoch_step + 1) * batch]
        lr = cosine_lr(step, steps, opt.lr, opt.warmup_fraction, opt.min_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            image_emb = F.normalize(vision(images[rows]).float(), dim=-1)
            text_emb = {k: F.normalize(text(t[rows]).float(), dim=-1)
                        for k, t in zip(config.positives, texts)}
            loss = loss_fn(image_emb, text_emb)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opt.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
        optimizer.step()
        if (step + 1) % config.log_every == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} lr {lr:.3g}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"vision_head.{k}": v for k, v in vision.state_dict().items()}
    tensors |= {f"text_head.{k}": v for k, v in text.state_dict().items()}
    tensors |= {f"loss.{k}": v for k, v in loss_fn.state_dict().items()}
    save_file(tensors, str(out / "heads.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", required=True, help="training store")
    parser.add_argument("--config", help="YAML recipe, e.g. configs/sail-offline.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (as `vlalign train sail --set`)")
    parser.add_argument("--steps", type=int, required=True, help="steps (the schedule's length)")
    parser.add_argument("--out", type=Path, required=True, help="folder for heads.safetensors")
    args = parser.parse_args()
    config = load_config(SailConfig, args.config, args.set)
    config.train_stores = args.store
    train(config, args.steps, args.out)


if __name__ == "__main__":
    main()
