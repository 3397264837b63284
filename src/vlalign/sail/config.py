"""The SAIL training recipe as a dataclass; YAML files in configs/ override these defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.config import setting
from vlalign.sail.heads import HEADS, INITS
from vlalign.sail.losses import LOSSES
from vlalign.train.config import OptimConfig, TrainSettings

CAPTION_KINDS = ("raw", "rewritten")

__all__ = ["HeadConfig", "OptimConfig", "SailConfig"]


@dataclass
class HeadConfig:
    kind: str = setting("glu", choices=tuple(k for k in HEADS if k != "identity"))
    width_factor: int = setting(8, minimum=1)  # glu: hidden = width_factor * input dim
    norm: bool = False  # linear: LayerNorm before the layer (the official probe head)
    init: str = setting("torch", choices=INITS)  # xavier: the official code's initialisation


@dataclass
class SailConfig(TrainSettings):
    """Everything that defines a SAIL run: stores, heads, loss, and the engine's settings."""

    train_stores: list[str] = field(default_factory=list)
    val_stores: list[str] = field(default_factory=list)
    vision_head: HeadConfig = field(default_factory=HeadConfig)
    text_head: HeadConfig = field(default_factory=HeadConfig)
    embed_dim: int = setting(1024, minimum=1)
    loss: str = setting("sigmoid", choices=tuple(LOSSES))  # sigmoid (SAIL) | siglip | infonce
    positives: list[str] = setting(["raw", "rewritten"], choices=CAPTION_KINDS)
    loss_block_size: int = setting(4096, minimum=1)
    # sigmoid losses: keep dL/dlogits from the forward instead of recomputing the logits in
    # backward (b x B values per caption kind in the matmul dtype: 2 GiB each at 32,768 in bf16)
    loss_save_grads: bool = False
    verify_stores: bool = True  # sha256 every training shard before the first step
    data_on_device: bool = False  # hold every stored row on the training device, index there
