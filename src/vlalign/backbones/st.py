"""sentence-transformers text adapter (``st:<folder-or-repo>``, and the bundled MiniLM).

Options: ``max_length`` (0: the known model's, else the pipeline's own ``max_seq_length``),
``remote_code`` (``trust_remote_code``; code an ``auto_map`` names in another Hub repo is fetched
first; the known paper models default to on), ``prompt=TEXT`` / ``instruction=TASK`` /
``prompt_name=NAME`` (one of the pipeline's named prompts; see ``text_recipes.resolve_prompt``),
handed to ``SentenceTransformer.encode(prompt=...)`` so the pipeline's ``include_prompt`` holds.
Without one, the pipeline's ``default_prompt_name`` applies, as in sentence-transformers.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import torch

from vlalign.backbones.base import (
    BaseTextEncoder,
    folder_weights_tag,
    make_identity,
    reject_stage,
)
from vlalign.backbones.hf import _one_line, fetch_remote_code, local_model_dir
from vlalign.backbones.text_recipes import (
    PROMPT_KEYS,
    PROMPT_OPTIONS,
    known_recipe,
    resolve_prompt,
    resolved_option,
)
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.optional import require

# max_length=0: the known model's (text_recipes.KNOWN_TEXT_MODELS), else the pipeline's own.
OPTIONS = {"batch_size": Option(64, minimum=1), "max_length": Option(0, minimum=0),
           "remote_code": Option(False), **PROMPT_OPTIONS}


class SentenceTransformerText(BaseTextEncoder):
    """A SentenceTransformer pipeline as a TextEncoder.

    Outputs are whatever the pipeline produces: normalised when it ends in a Normalize module
    (all-MiniLM-L6-v2 does), raw pooled vectors otherwise. float32, on the encoder's device.
    """

    def __init__(self, spec: Spec, folder: Path, device: str = "cpu",
                 name: str | None = None) -> None:
        opts = validate_options(spec, OPTIONS)
        name = name or spec.name
        known = known_recipe(name)
        remote = bool(resolved_option(spec, opts, "remote_code", known and known.remote_code))
        require("sentence_transformers", "backbones")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight-file load is noise in our output
        if remote:
            fetch_remote_code(folder, name, "st")
        try:
            self.model = SentenceTransformer(str(folder), device=device, local_files_only=True,
                                             trust_remote_code=remote)
        except (OSError, ValueError, ImportError) as err:
            raise UserError(f"cannot load a sentence-transformers model from {folder}: "
                            f"{_one_line(err)}") from err
        self.model.eval().requires_grad_(False)
        max_length = int(resolved_option(spec, opts, "max_length", known and known.max_length))
        if max_length:
            self.model.max_seq_length = max_length
        prompts = dict(getattr(self.model, "prompts", None) or {})
        given = any(key in spec.options for key in PROMPT_KEYS)
        self.prompt = resolve_prompt(spec, opts, prompts) if given else None
        self.batch_size = opts["batch_size"]
        resolved = {"batch_size": self.batch_size, "max_length": max_length,
                    "remote_code": remote}
        if self.prompt is not None:
            resolved["prompt"] = quote(self.prompt, safe="")
        self.identity = make_identity(spec, folder_weights_tag(folder), resolved)
        self.to(device)
        self.dim = int(self.model.get_embedding_dimension())

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """One batch through the whole pipeline (tokenise, transformer, pooling, normalise)."""
        return self.model.encode(texts, prompt=self.prompt, batch_size=len(texts),
                                 convert_to_tensor=True, show_progress_bar=False,
                                 device=str(self.device))


def load_st(spec: Spec, device: str = "cpu") -> SentenceTransformerText:
    """``st:<folder-or-repo>``; bare names like ``all-MiniLM-L6-v2`` mean sentence-transformers/."""
    reject_stage(spec)
    name = spec.name
    if "/" not in name and not Path(name).expanduser().exists():
        name = f"sentence-transformers/{name}"
    return SentenceTransformerText(spec, local_model_dir(name, "st"), device, name=name)
