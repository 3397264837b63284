"""Hugging Face adapters: transformers vision/text models, and offline-first Hub resolution.

Every Hub name is resolved to a local folder first (the path itself, or a snapshot already in the
Hub cache). Only when that fails is the Hub contacted, after a connect probe of about two seconds,
so an offline machine gets a one-line UserError instead of minutes of retries.
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from vlalign.backbones.base import (
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
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_PROBE_SECONDS = 2.0
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


# --- Hub resolution -----------------------------------------------------------------------------

def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """True if the Hub endpoint accepts a TCP connection within ``timeout`` s (DNS included)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


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
    if path.exists() or not _REPO_ID.match(name):
        raise UserError(f"{kind} model {name!r}: no such folder (and not a Hub repo id)")
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
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a transformers model from {folder}: {err}") from err
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


def _config(folder: Path, remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                          trust_remote_code=remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a transformers config in {folder}: {err}") from err


def _is_clip(config: Any) -> bool:
    return config.model_type in ("clip", "clip_vision_model", "clip_text_model")


def _preprocess(folder: Path, config: Any, size: int | None) -> Preprocess:
    """Square-resize recipe from preprocessor_config.json, else the config's image size."""
    vision = getattr(config, "vision_config", config)
    clip = _is_clip(config)
    default_size = getattr(vision, "image_size", 224)
    raw: dict[str, Any] = {}
    if (folder / "preprocessor_config.json").is_file():
        raw = json.loads((folder / "preprocessor_config.json").read_text())
    side = raw.get("crop_size") if raw.get("do_center_crop", True) else None
    side = side or raw.get("size") or default_size
    if isinstance(side, dict):
        side = side.get("height") or side.get("shortest_edge") or default_size
    if isinstance(side, (list, tuple)):
        side = side[0]
    return Preprocess(
        size=size or int(side),
        mean=tuple(raw.get("image_mean", CLIP_MEAN if clip else IMAGENET_MEAN)),
        std=tuple(raw.get("image_std", CLIP_STD if clip else IMAGENET_STD)),
        interpolation=_PIL_RESAMPLE.get(raw.get("resample", 3), "bicubic"))


class HFVisionEncoder:
    """transformers image model: ViTs give ``[CLS ; mean(patches)]``, CNN maps are pooled.

    Token models (DINOv2 with or without registers, ViT, CLIP vision) return the last hidden state's
    patch tokens (prefix tokens dropped). ``pool=proj`` on a CLIP checkpoint uses
    CLIPVisionModelWithProjection: pooled = image_embeds and tokens = visual_projection applied to
    the post-layernormed patches, i.e. both in CLIP's joint space (what a UTA teacher needs).
    """

    POOLS = ("auto", "clsmean", "cls", "mean", "proj", "avg", "max", "avgmax")
    # size=0: the checkpoint's own input size.
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
        self.preprocess = _preprocess(folder, config, opts["size"] or None)
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
            x = pixels.to(self.device, torch.float32)
            kwargs = {}
            if self.accepts_interpolate and self.native_size not in (None, x.shape[-1]):
                kwargs["interpolate_pos_encoding"] = True
            out = self.model(pixel_values=x, **kwargs)
            result = self._pool(out, x.shape[-2:])
            if not tokens:
                result.tokens = result.grid = None
        return released(result)

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
    """transformers text model. BERT-style: masked mean (``pool=mean``, default) or CLS of the
    last hidden state, not normalised. CLIP checkpoints: ``text_embeds`` of
    CLIPTextModelWithProjection (CLIP's joint space, not normalised)."""

    OPTIONS = {"pool": Option("auto", ("auto", "mean", "cls", "proj")),
               "max_length": Option(512, minimum=1), "batch_size": Option(64, minimum=1),
               "remote_code": Option(False)}

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, self.OPTIONS)
        folder = local_model_dir(spec.name, "hf")
        remote = opts["remote_code"]
        config = _config(folder, remote)
        clip = _is_clip(config)
        self.pool = opts["pool"] if opts["pool"] != "auto" else ("proj" if clip else "mean")
        if (self.pool == "proj") != clip:
            raise UserError(f"spec {str(spec)!r}: pool=proj is for CLIP checkpoints only, "
                            "mean or cls for the others")
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection

        self.model = _load_pretrained(CLIPTextModelWithProjection if clip else AutoModel, folder,
                                      remote, _tower_config(config, "text"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=remote)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load a tokenizer from {folder}: {err}") from err
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_length = min(opts["max_length"], limit)
        self.batch_size = opts["batch_size"]
        self.identity = make_identity(spec, folder_weights_tag(folder), opts)
        self.to(device)
        self.dim = self.encode(["probe"]).shape[1]

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Tokenise (padded, truncated to max_length), run the model, pool."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        out = self.model(**enc)
        if self.pool == "proj":
            return out.text_embeds
        if self.pool == "cls":
            return out.last_hidden_state[:, 0]
        mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
