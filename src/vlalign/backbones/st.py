"""sentence-transformers text adapter (``st:<folder-or-repo>``, and the bundled MiniLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.backbones.base import (
    BaseTextEncoder,
    folder_weights_tag,
    make_identity,
    reject_stage,
)
from vlalign.backbones.hf import local_model_dir
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options

# max_length=0 keeps the pipeline's own limit.
OPTIONS = {"batch_size": Option(64, minimum=1), "max_length": Option(0, minimum=0),
           "remote_code": Option(False)}


class SentenceTransformerText(BaseTextEncoder):
    """A SentenceTransformer pipeline as a TextEncoder.

    Outputs are whatever the pipeline produces: normalised when it ends in a Normalize module
    (all-MiniLM-L6-v2 does), raw pooled vectors otherwise. float32, on the encoder's device.
    """

    def __init__(self, spec: Spec, folder: Path, device: str = "cpu") -> None:
        opts = validate_options(spec, OPTIONS)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight-file load is noise in our output
        try:
            self.model = SentenceTransformer(str(folder), device=device, local_files_only=True,
                                             trust_remote_code=opts["remote_code"])
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load a sentence-transformers model from {folder}: {err}"
                            ) from err
        self.model.eval().requires_grad_(False)
        if opts["max_length"]:
            self.model.max_seq_length = opts["max_length"]
        self.batch_size = opts["batch_size"]
        self.identity = make_identity(spec, folder_weights_tag(folder), opts)
        self.to(device)
        self.dim = int(self.model.get_embedding_dimension())

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """One batch through the whole pipeline (tokenise, transformer, pooling, normalise)."""
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True,
                                 show_progress_bar=False, device=str(self.device))


def load_st(spec: Spec, device: str = "cpu") -> SentenceTransformerText:
    """``st:<folder-or-repo>``; bare names like ``all-MiniLM-L6-v2`` mean sentence-transformers/."""
    reject_stage(spec)
    name = spec.name
    if "/" not in name and not Path(name).expanduser().exists():
        name = f"sentence-transformers/{name}"
    return SentenceTransformerText(spec, local_model_dir(name, "st"), device)
