"""What users load: the CLIP-like interface, the SAIL and UTA models, and open_clip's entry
points (``load_model``, ``create_model_and_transforms``, ``get_tokenizer``)."""

from vlalign.models.base import CLIPLikeModel, ImageTransform, TextBatch, tokenize
from vlalign.models.load import create_model_and_transforms, get_tokenizer, load_model
from vlalign.models.sail import VLModel
from vlalign.models.sail_tower import SAILVisionTower
from vlalign.models.uta import UTAModel

__all__ = ["CLIPLikeModel", "ImageTransform", "SAILVisionTower", "TextBatch", "UTAModel",
           "VLModel", "create_model_and_transforms", "get_tokenizer", "load_model", "tokenize"]
