"""How a text-embedding model wants to be run: pooling of its token states, input length, prompt.

Shared by the ``hf:`` and ``st:`` adapters:

- ``KNOWN_TEXT_MODELS``: the few paper models whose recipe is not in their files (SAIL's code
  pools GTE-en-v1.5 by CLS, gte-Qwen2 by last token, NV-Embed-v2 through its own ``encode``,
  all at 1024 tokens); spec options override every entry;
- what a sentence-transformers folder says about itself (``1_Pooling/config.json``,
  ``sentence_bert_config.json``, named prompts in ``config_sentence_transformers.json``);
- the prompt options (``prompt=``, ``instruction=``, ``prompt_name=``), percent-decoded;
- token poolings over a padded batch: masked mean, first real token (CLS), last real token;
- reading a model's forward output, which may be a ModelOutput, a plain dict or a tuple.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import torch

from vlalign.errors import UserError
from vlalign.spec import Option, Spec, Value

# The query format of gte-Qwen2-instruct and NV-Embed-v2 (E5-mistral's too): ``instruction=TASK``.
INSTRUCTION_TEMPLATE = "Instruct: {}\nQuery: "
PROMPT_KEYS = ("prompt", "instruction", "prompt_name")
# Declared by both adapters; the values are percent-decoded (%20 space, %0A newline, %26 &).
PROMPT_OPTIONS = {key: Option("") for key in PROMPT_KEYS}
TOKEN_POOLS = ("mean", "cls", "last")
# Keys under which a forward's dict output holds one pooled vector per text (``pool=model``).
POOLED_KEYS = ("sentence_embeddings", "sentence_embedding", "embeddings", "text_embeds",
               "pooler_output")


@dataclass(frozen=True)
class TextRecipe:
    """Defaults for one known model: pooling, max length in tokens, custom code, prompt."""

    pool: str
    max_length: int
    remote_code: bool = False
    prompt: str = ""


_GTE_V15 = TextRecipe("cls", 1024, remote_code=True)
_GTE_QWEN2 = TextRecipe("last", 1024, remote_code=True)  # captions as documents: no instruction
KNOWN_TEXT_MODELS: dict[str, TextRecipe] = {
    "Alibaba-NLP/gte-large-en-v1.5": _GTE_V15,
    "Alibaba-NLP/gte-base-en-v1.5": _GTE_V15,
    "Alibaba-NLP/gte-Qwen2-7B-instruct": _GTE_QWEN2,
    "Alibaba-NLP/gte-Qwen2-1.5B-instruct": _GTE_QWEN2,
    "nvidia/NV-Embed-v2": TextRecipe("encode", 1024, remote_code=True),
}


def known_recipe(name: str) -> TextRecipe | None:
    """The table entry for a Hub id (case-insensitive), or for a local folder named like the
    repo (``.../gte-large-en-v1.5``, as ``hf download --local-dir`` leaves it); else None."""
    key = name.strip().rstrip("/").casefold()
    by_id = {repo.casefold(): recipe for repo, recipe in KNOWN_TEXT_MODELS.items()}
    if key in by_id:
        return by_id[key]
    path = Path(name).expanduser()
    if path.is_dir():
        for repo, recipe in by_id.items():
            if repo.split("/")[1] == path.resolve().name.casefold():
                return recipe
    return None


def resolved_option(spec: Spec, opts: Mapping[str, Value], key: str, known: Value | None) -> Value:
    """An option's value: the spec's if it gives one, else the known model's, else the default."""
    if key in spec.options or known is None:
        return opts[key]
    return known


# --- what a sentence-transformers folder says -----------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def st_pooling(folder: Path) -> str | None:
    """The pooling a sentence-transformers folder declares (cls, mean, last, or its own name for
    another mode such as max), from the Pooling module ``modules.json`` lists; None without one."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    for module in modules:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            config = _read_json(folder / str(module.get("path", "")) / "config.json")
            if isinstance(config, dict):
                return _pooling_mode(config)
    return None


def _pooling_mode(config: dict[str, Any]) -> str:
    """sentence-transformers 3-6 ``pooling_mode`` names, or the older boolean flags."""
    names = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
    mode = config.get("pooling_mode")
    if mode is None:  # pooling_mode_cls_token, pooling_mode_mean_tokens, ... pooling_mode_lasttoken
        flags = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
        mode = "+".join(flags) if flags else "mean"
    mode = "+".join(mode) if isinstance(mode, list) else str(mode)
    return names.get(mode, mode)


def st_max_length(folder: Path) -> int | None:
    """``max_seq_length`` from ``sentence_bert_config.json``, if the folder has one."""
    config = _read_json(folder / "sentence_bert_config.json")
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def st_prompts(folder: Path) -> dict[str, str]:
    """Named prompts from ``config_sentence_transformers.json`` (``{"query": "...", ...}``)."""
    config = _read_json(folder / "config_sentence_transformers.json")
    prompts = config.get("prompts") if isinstance(config, dict) else None
    return {str(k): str(v) for k, v in prompts.items()} if isinstance(prompts, dict) else {}


# --- prompts ------------------------------------------------------------------------------------

def resolve_prompt(spec: Spec, opts: Mapping[str, Value], named: Mapping[str, str],
                   default: str = "") -> str:
    """The prefix put before every text: ``prompt=TEXT`` verbatim, ``instruction=TASK`` as
    ``Instruct: TASK\\nQuery: ``, ``prompt_name=NAME`` from ``named``; at most one of them.
    Values are percent-decoded, since the spec grammar strips spaces and splits on ``&``."""
    given = [key for key in PROMPT_KEYS if key in spec.options]
    if len(given) > 1:
        raise UserError(f"spec {str(spec)!r} gives {' and '.join(given)}; give one of "
                        f"{', '.join(PROMPT_KEYS)}")
    if not given:
        return default
    key, value = given[0], unquote(str(opts[given[0]]))
    if key == "prompt":
        return value
    if key == "instruction":
        return INSTRUCTION_TEMPLATE.format(value)
    if value not in named:
        raise UserError(f"spec {str(spec)!r}: no prompt named {value!r}; the model defines "
                        f"{', '.join(sorted(named)) or 'none'} (config_sentence_transformers.json)")
    return named[value]


# --- pooling and forward outputs ----------------------------------------------------------------

def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """B x L x D token states and B x L attention mask -> B x D. ``mean``: masked mean; ``cls``:
    the first real token; ``last``: the last real token. Left or right padding, per row."""
    mask = mask.to(hidden.device)
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    real = mask.bool().int()
    if mode == "cls":
        index = real.argmax(1)
    elif mode == "last":
        index = real.shape[1] - 1 - real.flip(1).argmax(1)
    else:
        raise ValueError(f"unknown token pooling {mode!r}; expected {', '.join(TOKEN_POOLS)}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def token_states(out: Any) -> torch.Tensor | None:
    """The B x L x D last hidden state of a forward output, if it has one."""
    hidden = out.get("last_hidden_state") if isinstance(out, Mapping) else getattr(
        out, "last_hidden_state", None)
    if hidden is None and isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        hidden = out[0]
    return hidden if torch.is_tensor(hidden) and hidden.ndim == 3 else None


def pooled_output(out: Any) -> torch.Tensor | None:
    """The one B x D vector per text a forward output carries (``sentence_embeddings`` of
    NV-Embed-style dicts, ``pooler_output`` ...), B x 1 x D squeezed; None if there is none."""
    def vector(value: Any) -> torch.Tensor | None:
        if torch.is_tensor(value) and value.ndim == 3 and value.shape[1] == 1:
            value = value[:, 0]
        return value if torch.is_tensor(value) and value.ndim == 2 else None

    if isinstance(out, Mapping):
        named, others = [out.get(k) for k in POOLED_KEYS], list(out.values())
    elif isinstance(out, (tuple, list)):
        named, others = [], list(out)
    else:
        named, others = [getattr(out, k, None) for k in POOLED_KEYS], []
    for value in named:
        if vector(value) is not None:
            return vector(value)
    found = [v for v in map(vector, others) if v is not None]
    return found[0] if len(found) == 1 else None  # only when unambiguous


def describe_output(out: Any) -> str:
    """A forward output in a few words, for messages: its type and keys."""
    if isinstance(out, Mapping):
        keys = ", ".join(f"{k}" for k, v in out.items() if v is not None)
        return f"a {type(out).__name__} with {keys or 'nothing'}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return f"a {type(out).__name__}"
