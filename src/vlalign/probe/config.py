"""The probing recipe: which encoders, which data, and the linear-head training recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.train.config import OptimConfig


def linear_probe_recipe() -> SailConfig:
    """LayerNorm + one linear layer per side (the official probe head), sigmoid loss, one
    positive: SAIL's alignment probe, scaled to the offline data (configs/probe-paper.yaml has
    the official script's values). AdamW rather than the paper's Lion: with plain linear heads,
    Lion's sign updates made the best learning rate depend on each encoder's feature scale
    (1e-3 failed on every encoder here, 3e-5 under-trained them), while AdamW at 1e-3 trained
    every encoder tried (docs/probing.md, measured before the LayerNorm was added)."""
    head = HeadConfig(kind="linear", norm=True)
    return SailConfig(vision_head=head, text_head=copy.deepcopy(head),
                      embed_dim=512, loss="sigmoid", positives=["raw"], loss_block_size=1024,
                      optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-7),
                      batch_size=256, epochs=40, precision="auto", log_every=50,
                      checkpoint_every=1000, verify_stores=False)


@dataclass
class ProbeConfig:
    """A probe grid: every vision encoder with every text encoder."""

    vision: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    train_data: str = "emoji:train"  # image-caption pairs the linear heads are trained on
    test_data: str = "emoji:test"  # held-out pairs: retrieval here is the alignment score
    # labelled sets for each vision encoder's k-NN and linear-probe accuracy (train, test)
    labelled_train: list[str] = field(default_factory=lambda: ["fashion-mnist:train[:4000]"])
    labelled_test: list[str] = field(default_factory=lambda: ["fashion-mnist:test[:1000]"])
    # cheap partner encoders for stores that are needed for one side only
    image_side_text: str = "bundled:bow"
    text_side_vision: str = "bundled:pixels?size=16&patch=4"
    sail: SailConfig = field(default_factory=linear_probe_recipe)
    bootstrap_seed: int = 0


OFFLINE_VISION = [
    "bundled:mobilenetv2", *(f"bundled:mobilenetv2@stage{k}" for k in range(1, 6)),
    "bundled:efficientnet-lite0", *(f"bundled:efficientnet-lite0@stage{k}" for k in range(1, 6)),
    "bundled:mobilenetv2?weights=random", "bundled:efficientnet-lite0?weights=random",
    "bundled:pixels?size=32&patch=4",
]
OFFLINE_TEXT = ["bundled:minilm", "bundled:e5", "bundled:bow"]


def offline_suite() -> ProbeConfig:
    """`vlalign probe --suite offline`: 15 vision x 3 text encoders; alignment on emoji, clustering
    and linear separability on Fashion-MNIST and on the emoji categories."""
    return ProbeConfig(vision=list(OFFLINE_VISION), text=list(OFFLINE_TEXT),
                       labelled_train=["fashion-mnist:train[:4000]", "emoji:train"],
                       labelled_test=["fashion-mnist:test[:1000]", "emoji:test"])
