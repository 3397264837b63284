"""The SAIL training recipe as a dataclass; YAML files in configs/ override these defaults."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HeadConfig:
    kind: str = "glu"  # linear | glu | mlp
    width_factor: int = 8  # glu: hidden = width_factor * input dim


@dataclass
class OptimConfig:
    name: str = "lion"  # lion | adamw
    lr: float = 1e-5
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_fraction: float = 0.1
    min_lr_fraction: float = 0.0
    grad_clip: float = 1.0


@dataclass
class SailConfig:
    """Everything that defines a SAIL run (stores, heads, loss, optimiser, schedule)."""

    train_stores: list[str] = field(default_factory=list)
    val_stores: list[str] = field(default_factory=list)
    vision_head: HeadConfig = field(default_factory=HeadConfig)
    text_head: HeadConfig = field(default_factory=HeadConfig)
    embed_dim: int = 1024
    loss: str = "sigmoid"  # sigmoid (SAIL, |B|^2) | siglip (|B|) | infonce
    positives: list[str] = field(default_factory=lambda: ["raw", "rewritten"])
    loss_block_size: int = 4096
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 32768
    epochs: float = 100.0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (autocast dtype; see utils/precision)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 100  # steps
    num_threads: int = 0  # torch CPU threads; 0 = leave torch's default
    verify_stores: bool = True  # sha256 every training shard before the first step
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda
