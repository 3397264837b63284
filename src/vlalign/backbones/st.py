"""sentence-transformers text adapter (``st:<folder-or-repo>``, and the bundled MiniLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.backbones.base import (
    folder_weights_tag,
    int_option,
    make_identity,
    reject_stage,
    resolve_options,
)
from vlalign.backbones.hf import local_model_dir
from vlalign.backbones.spec import Spec
from vlalign.errors import UserError

ST_DEFAULTS = {"batch_size": "64", "max_length": "0", "remote_code": "0"}


class SentenceTransformerText:
    """A SentenceTransformer pipeline as a TextEncoder.

    Outputs are whatever the pipeline produces: normalised when it ends in a Normalize module
    (all-MiniLM-L6-v2 does), raw pooled vectors otherwise. float32, on the encoder's device.
    """

    def __init__(self, spec: Spec, folder: Path, device: str = "cpu") -> None:
        opts = resolve_options(spec, ST_DEFAULTS)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight-file load is noise in our output
        try:
            self.model = SentenceTransformer(
                str(folder), device=device, local_files_only=True,
                trust_remote_code=opts["remote_code"].lower() in ("1", "true", "yes"))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load a sentence-transformers model from {folder}: {err}"
                            ) from err
        self.model.eval().requires_grad_(False)
        if opts["max_length"] != "0":
            self.model.max_seq_length = int_option(spec, opts, "max_length")
        self.batch_size = int_option(spec, opts, "batch_size")
        self.identity = make_identity(spec, folder_weights_tag(folder), opts)
        self.device = torch.device(device)
        self.dim = int(self.model.get_embedding_dimension())

    def to(self, device: torch.device | str) -> SentenceTransformerText:
        """Move the model; outputs come back on the same device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def encode(self, texts: list[str]) -> torch.Tensor:
        """B x dim float32 embeddings (see the class docstring for normalisation)."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        with torch.inference_mode():
            out = self.model.encode(list(texts), batch_size=self.batch_size,
                                    convert_to_tensor=True, show_progress_bar=False,
                                    device=str(self.device))
        return out.to(self.device, torch.float32, copy=True)


def load_st(spec: Spec, device: str = "cpu") -> SentenceTransformerText:
    """``st:<folder-or-repo>``; bare names like ``all-MiniLM-L6-v2`` mean sentence-transformers/."""
    reject_stage(spec)
    name = spec.name
    if "/" not in name and not Path(name).expanduser().exists():
        name = f"sentence-transformers/{name}"
    return SentenceTransformerText(spec, local_model_dir(name, "st"), device)
