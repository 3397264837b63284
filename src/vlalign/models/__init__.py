"""What users load: the CLIP-like interface, the SAIL and UTA models, and ``load_model``."""

from vlalign.models.base import CLIPLikeModel, TextBatch
from vlalign.models.load import load_model
from vlalign.models.sail import VLModel
from vlalign.models.sail_tower import SAILVisionTower
from vlalign.models.uta import UTAModel

__all__ = ["CLIPLikeModel", "SAILVisionTower", "TextBatch", "UTAModel", "VLModel", "load_model"]
