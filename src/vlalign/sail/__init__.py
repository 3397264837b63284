"""SAIL: alignment heads and contrastive losses trained on stored frozen-backbone features."""

from vlalign.sail.distributed import all_gather_with_grad
from vlalign.sail.heads import HEADS, GLUHead, LinearHead, MLPHead, create_head
from vlalign.sail.losses import (
    LOSSES,
    ContrastiveLoss,
    InfoNCELoss,
    SigmoidLoss,
    create_loss,
    infonce_loss_reference,
    sigmoid_loss_reference,
)

__all__ = [
    "HEADS",
    "LOSSES",
    "ContrastiveLoss",
    "GLUHead",
    "InfoNCELoss",
    "LinearHead",
    "MLPHead",
    "SigmoidLoss",
    "all_gather_with_grad",
    "create_head",
    "create_loss",
    "infonce_loss_reference",
    "sigmoid_loss_reference",
]
