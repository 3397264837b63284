"""Hugging Face adapters: transformers vision/text models, and offline-first Hub resolution.

Every Hub name is resolved to a local folder first (the path itself, or a snapshot already in the
Hub cache). Only when that fails is the Hub contacted, after a connect probe of about two seconds,
so an offline machine gets a one-line UserError instead of minutes of retries.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from vlalign.backbones.base import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BaseTextEncoder,
    Preprocess,
    VisionOutput,
    feature_map_to_tokens,
    folder_weights_tag,
    make_identity,
    pool_feature_map,
    pool_vit_tokens,
    reject_stage,
    released,
)
from vlalign.backbones.text_recipes import (
    PROMPT_OPTIONS,
    TOKEN_POOLS,
    TextRecipe,
    describe_output,
    known_recipe,
    pool_tokens,
    pooled_output,
    resolve_prompt,
    resolved_option,
    st_max_length,
    st_pooling,
    st_prompts,
    token_states,
)
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.hf_hub import REPO_ID, hub_reachable
from vlalign.utils.optional import require

log = logging.getLogger(__name__)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# --- Hub resolution -----------------------------------------------------------------------------

def offline_error(kind: str, name: str) -> UserError:
    """The one-line error for a Hub name that is neither local nor cached while offline."""
    return UserError(f"{kind} model {name!r} is not a local path and not in the local Hub cache, "
                     "and the model hub is unreachable (offline); pass a local folder or file")


def wanted_repo_files(files: list[str]) -> list[str]:
    """Files worth downloading from a repo: configs, vocabularies, code, one weight format."""
    files = [f for f in files if not f.startswith(("onnx/", "openvino/"))]
    weights = [f for f in files if f.endswith(".safetensors")] or [
        f for f in files if f.endswith((".bin", ".pth", ".pt"))]
    return [f for f in files if f.endswith((".json", ".txt", ".model", ".py"))] + weights


def local_model_dir(name: str, kind: str) -> Path:
    """A folder holding the model: the path itself, a cached Hub snapshot, or a fresh download."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not REPO_ID.match(name):
        raise UserError(f"{kind} model {name!r}: no such folder (and not a Hub repo id)")
    require("huggingface_hub", "backbones")
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001  (any cache miss means: go online or fail)
        pass
    if not hub_reachable():
        raise offline_error(kind, name)
    return Path(snapshot_download(name, allow_patterns=wanted_repo_files(
        HfApi().list_repo_files(name))))


def hub_file(repo: str, filenames: tuple[str, ...], kind: str) -> Path:
    """One file from a Hub repo (first of ``filenames`` found), from the cache or downloaded."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            raise offline_error(kind, repo)
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo, filename, local_files_only=local_only))
            except Exception:  # noqa: BLE001  (try the next name, then the network)
                continue
    raise UserError(f"{kind} repo {repo!r} has none of {', '.join(filenames)}")


def external_code_refs(folder: Path) -> dict[str, set[str]]:
    """Hub repos whose code a folder's ``auto_map`` names (``"org/repo--module.Class"``, as
    GTE-en-v1.5 points at ``Alibaba-NLP/new-impl``) -> their module files, from config.json and
    tokenizer_config.json. References without ``--`` are modelling files inside the folder."""
    refs: dict[str, set[str]] = {}
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((folder / filename).read_text()).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for ref in auto_map.values() if isinstance(auto_map, dict) else []:
            for item in ref if isinstance(ref, (list, tuple)) else [ref]:
                if isinstance(item, str) and "--" in item:
                    repo, _, target = item.partition("--")
                    refs.setdefault(repo, set()).add(target.split(".")[0] + ".py")
    return refs


def fetch_remote_code(folder: Path, name: str, kind: str) -> None:
    """Make sure the Python files of every repo ``external_code_refs`` names are in the Hub
    cache, where transformers looks with ``local_files_only=True``: found there, or downloaded
    (``*.py`` only) after the connect probe; offline, a one-line UserError naming both."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    for repo, modules in external_code_refs(folder).items():
        if all(isinstance(try_to_load_from_cache(repo, m), str) for m in sorted(modules)):
            continue
        if not hub_reachable():
            raise UserError(f"{kind} model {name!r} runs custom code from the Hub repo {repo!r}, "
                            "which is not in the local Hub cache, and the model hub is "
                            "unreachable (offline); run once online to cache it")
        try:
            snapshot_download(repo, allow_patterns=["*.py"])
        except Exception as err:  # noqa: BLE001  (any Hub failure: one line, named)
            raise UserError(f"{kind} model {name!r}: cannot download the code repo {repo!r} its "
                            f"auto_map names: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    """An exception's message on one line, with a hint when custom code was refused."""
    text = " ".join(str(err).split())
    if "trust_remote_code" in text:
        text += " (pass remote_code=1 in the spec to run the model's own code)"
    return text


# --- transformers loading -----------------------------------------------------------------------

@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; missing weights are checked here."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_pretrained(model_cls: Any, folder: Path, remote_code: bool,
                     config: Any = None) -> torch.nn.Module:
    """from_pretrained from a local folder; missing weights (other than a pooler) are an error."""
    kwargs = {"config": config} if config is not None else {}
    try:
        with _quiet_transformers():
            model, info = model_cls.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=remote_code,
                output_loading_info=True, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"cannot load a transformers model from {folder}: {_one_line(err)}"
                        ) from err
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    bad = missing + [k for k in info.get("mismatched_keys", [])]
    if bad:
        raise UserError(f"checkpoint in {folder} does not fit {type(model).__name__} "
                        f"({len(bad)} missing or mismatched weights, e.g. {bad[0]}); "
                        "refusing random init")
    return model.eval().requires_grad_(False)


def _tower_config(config: Any, tower: str) -> Any:
    """A full CLIP config's vision or text sub-config, carrying the shared projection size."""
    if config.model_type != "clip":
        return None
    sub = getattr(config, f"{tower}_config")
    sub.projection_dim = config.projection_dim
    return sub


def _config(folder: Path, remote_code: bool, name: str | None = None, kind: str = "hf") -> Any:
    """The folder's AutoConfig; with remote_code, code its auto_map names in other Hub repos is
    fetched into the cache first (``fetch_remote_code``)."""
    require("transformers", "backbones")
    from transformers import AutoConfig

    if remote_code:
        fetch_remote_code(folder, name or str(folder), kind)
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                          trust_remote_code=remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise UserError(f"cannot read a transformers config in {folder}: {_one_line(err)}"
                        ) from err


def _is_clip(config: Any) -> bool:
    return config.model_type in ("clip", "clip_vision_model", "clip_text_model")


def _preprocess(folder: Path, config: Any, size: int | None, remote_code: bool) -> Preprocess:
    """The checkpoint's image processor (preprocessor_config.json) as a Preprocess; without one,
    a square resize to the config's image_size. ``size``: the input side instead (the resize
    before a crop scales with it, see ``Preprocess.with_size``)."""
    if (folder / "preprocessor_config.json").is_file():
        pre = _processor_preprocess(folder, remote_code)
    else:
        vision = getattr(config, "vision_config", config)
        side = getattr(vision, "image_size", 224)
        clip = _is_clip(config)
        pre = Preprocess(size=int(side if isinstance(side, int) else side[0]),
                         mean=CLIP_MEAN if clip else IMAGENET_MEAN,
                         std=CLIP_STD if clip else IMAGENET_STD, interpolation="bicubic")
    return pre.with_size(size) if size else pre


def _processor_preprocess(folder: Path, remote_code: bool) -> Preprocess:
    """What ``AutoImageProcessor`` (PIL backend) does to an image, as a Preprocess: ``size``
    {shortest_edge} or {height, width}, ``do_center_crop`` + ``crop_size`` (transformers'
    floor rounding), ``resample``, ``do_rescale`` + ``rescale_factor``, ``do_normalize`` +
    ``image_mean``/``image_std``; ConvNeXT's crop_pct resize too. Processors that override the
    standard steps otherwise get those standard steps, with a warning."""
    from transformers import AutoImageProcessor

    proc, error = None, None
    for backend in ({"backend": "pil"}, {}):  # PIL's steps are vlalign's; the settings are equal
        try:
            proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True,
                                                      trust_remote_code=remote_code, **backend)
            break
        except (OSError, ValueError, KeyError, ImportError) as err:
            error = err
    if proc is None:
        raise UserError(f"cannot read the image processor in {folder}: {error}") from error
    name = type(proc).__name__
    _warn_if_custom(proc, name)
    size, crop_size = proc.size, getattr(proc, "crop_size", None)
    shortest, height, width = (_size_field(size, k) for k in ("shortest_edge", "height", "width"))
    crop = (_size_field(crop_size, "height"), _size_field(crop_size, "width")) if (
        getattr(proc, "do_center_crop", False) and crop_size) else None
    if name.startswith("ConvNext") and shortest:  # its own resize (ConvNextImageProcessorPil)
        if shortest < 384:  # the shorter edge to shortest / crop_pct, then a crop of shortest
            crop = (shortest, shortest)
            shortest = int(shortest / (getattr(proc, "crop_pct", None) or 224 / 256))
        else:  # a square resize to shortest
            shortest, height, width = None, shortest, shortest
    resize = "shortest" if shortest else "squash"
    if not getattr(proc, "do_resize", True) or not (shortest or (height and width)) or (
            _size_field(size, "longest_edge")) or (crop and crop[0] != crop[1]):
        raise UserError(f"{folder}: {name} with size {size}, crop {crop_size} and do_resize "
                        f"{getattr(proc, 'do_resize', True)} is not supported (a square input "
                        "from shortest_edge + crop, or height/width)")
    side = crop[0] if crop else height
    resample = getattr(proc, "resample", None)
    mean, std = (proc.image_mean, proc.image_std) if proc.do_normalize else (0.0, 1.0)
    return Preprocess(
        size=side, mean=mean, std=std,
        interpolation=_PIL_RESAMPLE.get(2 if resample is None else int(resample), "bicubic"),
        resize=resize, resize_size=shortest if resize == "shortest" else (height, width),
        crop=side if crop else None, crop_rounding="floor",
        rescale=proc.rescale_factor if proc.do_rescale else 1.0)


def _size_field(size: Any, key: str) -> int | None:
    """One field of a transformers size (SizeDict, dict or a plain int for both sides)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size if key in ("height", "width") else None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def _warn_if_custom(proc: Any, name: str) -> None:
    """Warn when a processor replaces the standard resize / crop / preprocess steps."""
    try:
        from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    except ImportError:  # older transformers: no backends to compare with
        return
    base = next((b for b in (PilBackend, TorchvisionBackend) if isinstance(proc, b)), None)
    custom = [m for m in ("resize", "center_crop", "_preprocess")
              if base is not None and getattr(type(proc), m) is not getattr(base, m)]
    if custom and not name.startswith("ConvNext"):
        log.warning("%s overrides %s; vlalign applies the standard steps of its config, which "
                    "may differ from its own", name, ", ".join(custom))


class HFVisionEncoder:
    """transformers image model: ViTs give ``[CLS ; mean(patches)]``, CNN maps are pooled.

    Token models (DINOv2 with or without registers, ViT, CLIP vision) return the last hidden state's
    patch tokens (prefix tokens dropped). ``pool=proj`` on a CLIP checkpoint uses
    CLIPVisionModelWithProjection: pooled = image_embeds and tokens = visual_projection applied to
    the post-layernormed patches, i.e. both in CLIP's joint space (what a UTA teacher needs).
    """

    POOLS = ("auto", "clsmean", "cls", "mean", "proj", "avg", "max", "avgmax")
    # size=0: the checkpoint's own input size; size=N: N x N inputs (the crop, with the resize
    # before it scaled alike: DINOv2's 256 -> 224 becomes 512 -> 448 at size=448).
    OPTIONS = {"pool": Option("auto", POOLS), "size": Option(0, minimum=0),
               "remote_code": Option(False)}

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, self.OPTIONS)
        folder = local_model_dir(spec.name, "hf")
        remote = opts["remote_code"]
        config = _config(folder, remote)
        self.pool = opts["pool"]
        if self.pool == "proj" and not _is_clip(config):
            raise UserError(f"spec {str(spec)!r}: pool=proj needs a CLIP checkpoint")
        from transformers import AutoModel, CLIPVisionModel, CLIPVisionModelWithProjection

        if self.pool == "proj":
            model_cls = CLIPVisionModelWithProjection
        else:
            model_cls = CLIPVisionModel if _is_clip(config) else AutoModel
        self.model = _load_pretrained(model_cls, folder, remote, _tower_config(config, "vision"))
        vision = getattr(self.model.config, "vision_config", self.model.config)
        self.patch = getattr(vision, "patch_size", None)
        self.num_prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0) + int(
            config.model_type == "deit")
        self.native_size = getattr(vision, "image_size", None)
        self.accepts_interpolate = "interpolate_pos_encoding" in inspect.signature(
            self.model.forward).parameters
        self.preprocess = _preprocess(folder, config, opts["size"] or None, remote)
        self.identity = make_identity(spec, folder_weights_tag(folder), opts)
        self.device = torch.device(device)
        self.model.to(self.device)
        side = self.preprocess.size
        try:
            probe = self.encode(torch.zeros(1, 3, side, side), tokens=True)
        except (TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"{str(spec)!r} does not work as an image encoder: {err}") from err
        self.dim = probe.pooled.shape[1]
        self.token_dim = 0 if probe.tokens is None else probe.tokens.shape[2]

    def to(self, device: torch.device | str) -> HFVisionEncoder:
        """Move the model; later inputs are moved to the same device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput:
        """Pooled vectors (and the patch-token map) for a preprocessed batch."""
        with torch.inference_mode():
            result = self.forward_features(pixels)
            if not tokens:
                result.tokens = result.grid = None
        return released(result)

    def forward_features(self, pixels: torch.Tensor) -> VisionOutput:
        """The pooled vectors and token map of ``encode``, with autograd as the caller sets it
        (for tuning the backbone, e.g. in ``SAILVisionTower``); inputs in the model's dtype."""
        x = pixels.to(self.device, next(self.model.parameters()).dtype)
        kwargs = {}
        if self.accepts_interpolate and self.native_size not in (None, x.shape[-1]):
            kwargs["interpolate_pos_encoding"] = True
        return self._pool(self.model(pixel_values=x, **kwargs), x.shape[-2:])

    def _pool(self, out: Any, hw: torch.Size) -> VisionOutput:
        hidden = out.last_hidden_state.float()
        if hidden.ndim == 4:
            if self.pool not in ("auto", "avg", "max", "avgmax"):
                raise UserError(f"pool={self.pool} is for token models; use avg, max or avgmax")
            pooled = pool_feature_map(hidden, "avg" if self.pool == "auto" else self.pool)
            token_map, grid = feature_map_to_tokens(hidden)
            return VisionOutput(pooled=pooled, tokens=token_map, grid=grid)
        if self.pool in ("avg", "max", "avgmax"):
            raise UserError(f"pool={self.pool} is for CNN feature maps; use clsmean, cls or mean")
        result = pool_vit_tokens(hidden, self.num_prefix)
        if self.patch and hw[0] // self.patch * (hw[1] // self.patch) == result.tokens.shape[1]:
            result.grid = (hw[0] // self.patch, hw[1] // self.patch)
        if self.pool == "cls":
            result.pooled = result.cls
        elif self.pool == "mean":
            result.pooled = result.tokens.mean(dim=1)
        elif self.pool == "proj":
            post = self.model.vision_model.post_layernorm(result.tokens)
            result.tokens = self.model.visual_projection(post)
            result.pooled = out.image_embeds.float()
        return result


class HFTextEncoder(BaseTextEncoder):
    """transformers text model -> one vector per text, not normalised.

    ``pool``: ``mean`` (masked mean of the last hidden state), ``cls`` (first real token),
    ``last`` (last real token, per row, left or right padding: gte-Qwen2 and other decoder
    embedders), ``proj`` (CLIP's ``text_embeds``, the joint space), ``model`` (the one pooled
    vector the forward returns, e.g. the ``sentence_embeddings`` of a forward returning a dict),
    ``encode`` (the model's own ``encode(texts, instruction=, max_length=)``, NV-Embed style: its
    EOS and latent-attention pooling). ``auto`` picks, in order: the ``KNOWN_TEXT_MODELS`` entry
    (GTE-en-v1.5 cls, gte-Qwen2 last, NV-Embed-v2 encode), proj for CLIP, encode when the model
    has an ``encode`` taking ``instruction``, the folder's sentence-transformers pooling
    (``1_Pooling/config.json``: cls, mean or lasttoken), model when the forward has no token
    states but one pooled vector, else mean.

    ``max_length`` (0: the known model's, else ``sentence_bert_config.json``'s, else 512; at most
    the position limit), ``prompt``/``instruction``/``prompt_name`` (a prefix for every text,
    see ``resolve_prompt``; the encode path passes it as ``instruction=``), ``remote_code`` (run
    the checkpoint's own modelling code; the known models default to on).
    """

    POOLS = ("auto", "mean", "cls", "last", "proj", "model", "encode")
    OPTIONS = {"pool": Option("auto", POOLS), "max_length": Option(0, minimum=0),
               "batch_size": Option(64, minimum=1), "remote_code": Option(False),
               **PROMPT_OPTIONS}
    DEFAULT_MAX_LENGTH = 512

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, self.OPTIONS)
        known = known_recipe(spec.name)
        folder = local_model_dir(spec.name, "hf")
        remote = bool(resolved_option(spec, opts, "remote_code", known and known.remote_code))
        config = _config(folder, remote, spec.name)
        clip = _is_clip(config)
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection

        self.spec = str(spec)
        self.model = _load_pretrained(CLIPTextModelWithProjection if clip else AutoModel, folder,
                                      remote, _tower_config(config, "text"))
        self.pool = self._choose_pool(str(opts["pool"]), known, folder, clip)
        self.prefix = resolve_prompt(spec, opts, st_prompts(folder), known.prompt if known else "")
        self.tokenizer = None
        if self.pool != "encode":
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=remote)
            except (OSError, ValueError, ImportError) as err:
                raise UserError(f"cannot load a tokenizer from {folder}: {_one_line(err)}"
                                ) from err
        wanted = int(resolved_option(spec, opts, "max_length", known and known.max_length))
        wanted = wanted or st_max_length(folder) or (0 if self.pool == "encode" else
                                                     self.DEFAULT_MAX_LENGTH)
        limit = _position_limit(self.model.config)
        self.max_length = min(wanted, limit) if wanted and limit else wanted
        self.batch_size = int(opts["batch_size"])
        self.forward_keys = _forward_keys(self.model)
        self.to(device)
        try:
            if opts["pool"] == "auto" and self.pool == "mean":  # a forward without token states?
                out = self._forward(["probe"])[0]
                if token_states(out) is None and pooled_output(out) is not None:
                    self.pool = "model"
            self.dim = self.encode(["probe"]).shape[1]
        except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError) as err:
            raise UserError(f"{self.spec!r} does not work as a text encoder with pool={self.pool}"
                            f": {type(err).__name__}: {_one_line(err)}") from err
        resolved = {"pool": self.pool, "max_length": self.max_length,
                    "batch_size": self.batch_size, "remote_code": remote}
        if self.prefix:
            resolved["prompt"] = quote(self.prefix, safe="")
        self.identity = make_identity(spec, folder_weights_tag(folder), resolved)

    def _choose_pool(self, pool: str, known: TextRecipe | None, folder: Path, clip: bool) -> str:
        """``auto`` resolved (see the class docstring); a UserError when the choice cannot work."""
        own = _own_encode(self.model)
        if pool == "auto":
            st_pool = st_pooling(folder)
            if known:
                pool = known.pool
            elif clip:
                pool = "proj"
            elif own is not None and "instruction" in inspect.signature(own).parameters:
                pool = "encode"
            elif st_pool in TOKEN_POOLS:
                pool = st_pool
            elif st_pool is not None:
                raise UserError(f"{self.spec!r}: the folder's sentence-transformers pooling is "
                                f"{st_pool!r}, which hf: does not do; use st:, or pool=mean, "
                                "cls or last")
            else:
                pool = "mean"
        if (pool == "proj") != clip:
            raise UserError(f"spec {self.spec!r}: pool=proj is for CLIP checkpoints only, "
                            "mean, cls, last, model or encode for the others")
        if pool == "encode" and own is None:
            raise UserError(f"spec {self.spec!r}: pool=encode needs a model with its own "
                            f"encode(texts, ...) method; {type(self.model).__name__} has none")
        return pool

    def _forward(self, texts: list[str]) -> tuple[Any, torch.Tensor]:
        """Tokenise (padded, truncated to max_length), run the forward: (its output, the mask)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        keys = self.forward_keys
        out = self.model(**{k: v for k, v in enc.items() if keys is None or k in keys})
        return out, enc["attention_mask"]

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Prefix, then the model's own encode, or tokenise + forward + pool."""
        if self.pool == "encode":
            return self._own_encode(texts)
        out, mask = self._forward([self.prefix + t for t in texts])
        if self.pool == "proj":
            return out.text_embeds
        if self.pool == "model":
            pooled = pooled_output(out)
            if pooled is None:
                raise UserError(f"{self.spec!r}: pool=model needs one pooled vector per text in "
                                f"the forward's output, which is {describe_output(out)}")
            return pooled
        hidden = token_states(out)
        if hidden is None:
            raise UserError(f"{self.spec!r}: pool={self.pool} needs token states "
                            f"(last_hidden_state), but the forward returns "
                            f"{describe_output(out)}; use pool=model or pool=encode")
        return pool_tokens(hidden, mask, self.pool)

    def _own_encode(self, texts: list[str]) -> torch.Tensor:
        """``model.encode(texts, instruction=prefix, max_length=...)``, passing what it accepts
        (a prefix it cannot take as ``instruction`` is put before the texts)."""
        encode = _own_encode(self.model)
        params = inspect.signature(encode).parameters
        anything = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs: dict[str, Any] = {}
        if "instruction" in params:
            kwargs["instruction"] = self.prefix
        elif self.prefix:
            texts = [self.prefix + t for t in texts]
        if self.max_length and ("max_length" in params or anything):
            kwargs["max_length"] = self.max_length
        out = torch.as_tensor(encode(texts, **kwargs))
        if out.ndim == 3 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise UserError(f"{self.spec!r}: the model's encode returned shape {tuple(out.shape)} "
                            f"for {len(texts)} texts; expected {len(texts)} x D")
        return out


def _own_encode(model: torch.nn.Module) -> Any:
    """The model's own ``encode`` method (NV-Embed style), or None."""
    encode = getattr(model, "encode", None)
    return encode if callable(encode) else None


def _forward_keys(model: torch.nn.Module) -> set[str] | None:
    """The tokenizer outputs the forward takes by name (None: it takes any keyword), so a custom
    forward without ``token_type_ids`` is not handed one."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _position_limit(config: Any) -> int | None:
    """max_position_embeddings of the config or its text sub-config (NV-Embed nests one)."""
    for cfg in (config, getattr(config, "text_config", None)):
        limit = getattr(cfg, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None
