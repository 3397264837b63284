"""Share models through the Hugging Face Hub: ``push_to_hub`` and ``resolve_hub_model``.

A pushed repository holds the model files of a finished run or saved model folder (SAIL:
``heads.json`` + ``heads.safetensors``; UTA: ``uta.json`` + ``student.safetensors``; never
checkpoints or metrics) and a model card ``README.md`` whose YAML front matter carries
``library_name: vlalign``, tags, ``base_model`` (the backbones that are Hub models) and, when
the run has CLIP_benchmark-shaped results, ``model-index``.

Backbones are named by spec, never uploaded. A spec that points into the local Hub cache
(``hf:~/.cache/huggingface/hub/models--ORG--NAME/snapshots/REV``) is written to the uploaded
config as ``hf:ORG/NAME`` (the identity's name part likewise; its weights hash is kept, so a
loader that gets other weights refuses them) and recorded as ``ORG/NAME@REV`` in the card. A
local folder that is not a Hub snapshot stays a path, with a warning in the card that others
cannot fetch it.

``vlalign.load_model("hf-hub:ORG/REPO[@REV]")`` goes through ``resolve_hub_model``:
``snapshot_download`` (which honours ``HF_HUB_OFFLINE`` and the local cache), then the folder.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlalign.errors import UserError
from vlalign.sail import artifact as sail_artifact
from vlalign.uta import artifact as uta_artifact
from vlalign.uta.official import TEXT_CONFIG, TEXT_WEIGHTS
from vlalign.utils.files import atomic_write_bytes, atomic_write_json, read_json
from vlalign.utils.hf_hub import REPO_ID, hub_offline, hub_reachable
from vlalign.utils.optional import require

log = logging.getLogger(__name__)

HUB_SCHEME = "hf-hub:"
SAIL_FILES = (sail_artifact.CONFIG, sail_artifact.WEIGHTS)
UTA_FILES = (uta_artifact.CONFIG, uta_artifact.WEIGHTS)
TEXT_TOWER_FILES = (TEXT_CONFIG, TEXT_WEIGHTS)  # an import-uta model's own text tower
CARD = "README.md"
RESULTS = "results.json"  # what `vlalign eval --suite` writes; looked for in the run folder
DEFAULT_COMMIT_MESSAGE = "Upload vlalign model"
_SNAPSHOT = re.compile(r"^models--(?P<repo>.+)$")
_COUNTS = {"skipped", "train_size", "lp_weight_decay", "seconds", "count", "n"}
# vlalign task -> the Hub's task type (model-index); unknown tasks keep their own name
HUB_TASKS = {
    "zeroshot_classification": "zero-shot-image-classification",
    "zeroshot_retrieval": "zero-shot-retrieval",
    "zeroshot_segmentation": "image-segmentation",
    "knn": "image-classification",
    "linear_probe": "image-classification",
    "winoground": "image-text-matching",
    "mmvp": "image-text-matching",
}


# --- backbones: where others can get them ------------------------------------------------------

@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone comes from: ``spec`` as trained, ``hub_spec`` as written to the upload,
    the Hub ``repo`` and ``revision`` when it is a Hub model, and whether others can fetch it."""

    role: str
    spec: str
    hub_spec: str
    repo: str | None = None
    revision: str | None = None
    fetchable: bool = True
    note: str = ""

    @property
    def source(self) -> str:
        """``ORG/NAME@REV``, ``ORG/NAME``, or the spec itself."""
        if self.repo is None:
            return self.spec
        return self.repo + (f"@{self.revision}" if self.revision else "")


def split_spec(spec: str) -> tuple[str, str, str]:
    """``scheme:name?query`` -> (scheme, name, ``?query`` or ''); ``@stage`` stays in the name
    (only bundled CNNs have stages, and they are never rewritten)."""
    scheme, _, rest = spec.partition(":")
    name, question, query = rest.partition("?")
    return scheme.strip().lower(), name.strip(), question + query


def cache_snapshot(path: str | Path) -> tuple[str, str] | None:
    """(repo id, revision) when ``path`` is a snapshot folder of the HF Hub cache
    (``.../models--ORG--NAME/snapshots/REV``); None otherwise (a subfolder of a snapshot too:
    a spec cannot name one)."""
    parts = Path(path).expanduser().resolve(strict=False).parts
    if len(parts) < 3 or parts[-2] != "snapshots":
        return None
    match = _SNAPSHOT.match(parts[-3])
    if not match:
        return None
    return match.group("repo").replace("--", "/"), parts[-1]


def cached_revision(repo: str, ref: str = "main") -> str | None:
    """The commit the local Hub cache has for ``repo``'s ``ref`` (None if not cached)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    ref_file = Path(cache) / f"models--{repo.replace('/', '--')}" / "refs" / ref
    try:
        return ref_file.read_text().strip() or None
    except OSError:
        return None


def backbone_source(role: str, spec: str) -> BackboneSource:
    """Classify one backbone spec (see the module docstring)."""
    scheme, name, query = split_spec(spec)
    local = ("a local folder, not a Hub model: others cannot fetch it, so this model loads "
             "only where that folder exists")
    if scheme == "bundled":
        return BackboneSource(role, spec, spec, note="pip install 'vlalign[bundled]'")
    if scheme == "sail":  # a UTA teacher: a vlalign model folder
        return BackboneSource(role, spec, spec, fetchable=False,
                              note=local.replace("a local folder", "a local vlalign model")
                              + " (push it too, and share both)")
    if scheme in ("hf", "st"):
        if Path(name).expanduser().is_dir():
            snapshot = cache_snapshot(name)
            if snapshot is None:
                return BackboneSource(role, spec, spec, fetchable=False, note=local)
            repo, revision = snapshot
            return BackboneSource(role, spec, f"{scheme}:{repo}{query}", repo, revision)
        if REPO_ID.match(name):
            return BackboneSource(role, spec, spec, name, cached_revision(name))
        return BackboneSource(role, spec, spec, fetchable=False, note=local)
    if scheme in ("timm", "open_clip"):
        if name.startswith("local-dir:") or Path(name).expanduser().exists():
            return BackboneSource(role, spec, spec, fetchable=False, note=local)
        if name.startswith(HUB_SCHEME):
            repo = name[len(HUB_SCHEME):].split("/", 2)
            repo_id = "/".join(repo[:2])
            return BackboneSource(role, spec, spec, repo_id, cached_revision(repo_id))
        return BackboneSource(role, spec, spec, note=f"fetched by {scheme} itself")
    return BackboneSource(role, spec, spec, fetchable=False, note="unknown scheme")


def rebase_identity(identity: str, source: BackboneSource) -> str:
    """The identity with the spec's name part replaced as ``hub_spec`` replaced it; unchanged if
    the identity does not start with the trained spec's ``scheme:name``."""
    scheme, old, _ = split_spec(source.spec)
    _, new, _ = split_spec(source.hub_spec)
    prefix = f"{scheme}:{old}"
    if old == new or not identity.startswith(prefix):
        return identity
    return f"{scheme}:{new}" + identity[len(prefix):]


def _publish_record(record: dict[str, Any], role: str) -> tuple[dict[str, Any], BackboneSource]:
    """A config's ``{"spec", "identity", ...}`` record as it is uploaded, and its source."""
    source = backbone_source(role, record["spec"])
    if source.hub_spec == source.spec:
        return record, source
    return {**record, "spec": source.hub_spec,
            "identity": rebase_identity(record.get("identity", ""), source)}, source


# --- the run: which model, which results -------------------------------------------------------

def model_kind(run_dir: Path) -> str:
    """'sail' or 'uta' for a finished run or saved model folder; a UserError otherwise."""
    if all((run_dir / name).is_file() for name in UTA_FILES):
        return "uta"
    if all((run_dir / name).is_file() for name in SAIL_FILES):
        return "sail"
    raise UserError(f"{run_dir} is not a vlalign model: expected {' + '.join(SAIL_FILES)} (SAIL) "
                    f"or {' + '.join(UTA_FILES)} (UTA), as a finished `vlalign train` run or a "
                    "`save_pretrained` folder holds")


def _records_in(data: Any) -> list[dict[str, Any]]:
    """Result records in a parsed JSON document: a list, one record, or ``{"results": [...]}``."""
    if isinstance(data, Mapping) and not ("task" in data and "metrics" in data):
        data = data.get("results", data.get("records", []))
    items = data if isinstance(data, list) else [data]
    return [dict(r) for r in items if isinstance(r, Mapping) and isinstance(r.get("task"), str)
            and isinstance(r.get("metrics"), Mapping)]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """CLIP_benchmark-shaped records (``{dataset, model, pretrained, task, metrics, ...}``) from a
    JSON file (a list, one record, or ``{"results": [...]}``) or a folder (its results.json, else
    every record file one level down, as ``vlalign eval`` writes them). Records lacking a task
    or metrics are skipped; an unreadable file is a UserError."""
    path = Path(path)
    if path.is_dir():
        if (path / RESULTS).is_file():
            return read_results(path / RESULTS)
        files = sorted([*path.glob("*.json"), *path.glob("*/*.json")])
        return [r for p in files for r in _records_in(_read_json(p))]
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    return _records_in(_read_json(path))


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not readable JSON ({' '.join(str(error).split())})") from None


def records_for(records: list[dict[str, Any]], run_dir: Path) -> list[dict[str, Any]]:
    """The records of this model: all of them when they name one model, else those whose
    ``pretrained`` is the run folder or whose ``model`` is its name."""
    models = {str(r.get("model")) for r in records}
    if len(models) <= 1:
        return records
    here = run_dir.resolve()

    def mine(record: dict[str, Any]) -> bool:
        pretrained = str(record.get("pretrained") or "").removeprefix("random-heads:")
        same = bool(pretrained) and Path(pretrained).expanduser().resolve() == here
        return same or record.get("model") == run_dir.name

    return [r for r in records if mine(r)]


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite numeric metrics, without per-class/per-tag entries (``/``) and counts."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and "/" not in k and k not in _COUNTS}


def _dataset(spec: str) -> dict[str, str]:
    """model-index dataset entry from a data spec (``fashion-mnist:test[:1000]``)."""
    kind, _, rest = spec.partition(":")
    split = re.split(r"[\[?]", rest, maxsplit=1)[0]
    entry = {"name": spec, "type": kind or spec}
    if split and "/" not in split:
        entry["split"] = split
    return entry


def model_index(name: str, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Hub's ``model-index`` (one result per record with at least one numeric metric)."""
    results = []
    for record in records:
        metrics = headline_metrics(record["metrics"])
        if not metrics:
            continue
        task = record["task"]
        results.append({
            "task": {"type": HUB_TASKS.get(task, task), "name": task},
            "dataset": _dataset(str(record.get("dataset", "unknown"))),
            "metrics": [{"type": k, "value": round(v, 6), "name": k} for k, v in metrics.items()],
        })
    return [{"name": name, "results": results}] if results else []


# --- the model card ----------------------------------------------------------------------------

def _sources(kind: str, config: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(config key, backbone record) pairs of a heads.json / uta.json."""
    keys = ("teacher",) if kind == "uta" else ("vision", "text")
    return [(key, config[key]) for key in keys]


def _facts(kind: str, config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if kind == "uta":
        student = config.get("student", {})
        return [("objective", config.get("objective")), ("step", config.get("step")),
                ("student", ", ".join(f"{k} {student[k]}" for k in
                                      ("dim", "depth", "heads", "patch_size", "img_size")
                                      if k in student))]

    def head(spec: Mapping[str, Any]) -> str:
        extra = f", width x{spec['width_factor']}" if "width_factor" in spec else ""
        return f"{spec.get('kind')} {spec.get('in_dim')} -> {spec.get('out_dim')}{extra}"

    return [("step", config.get("step")), ("loss", config.get("loss")),
            ("embedding dim", config.get("embed_dim")),
            ("caption positives", ", ".join(config.get("positives") or []) or None),
            ("vision head", head(config["vision_head"])), ("text head", head(config["text_head"])),
            ("untrained control (seed)", config.get("untrained_seed"))]


def model_card(repo_id: str, kind: str, config: Mapping[str, Any],
               sources: list[BackboneSource], records: list[dict[str, Any]],
               license: str | None = None) -> str:
    """README.md: YAML front matter (library_name, tags, base_model, model-index) + the text."""
    name = repo_id.split("/")[-1]
    tags = ["vlalign", kind, "vision-language", "clip", "zero-shot-image-classification"]
    meta: dict[str, Any] = {"library_name": "vlalign"}
    if license:
        meta["license"] = license
    meta["tags"] = tags
    meta["pipeline_tag"] = "zero-shot-image-classification"
    base = list(dict.fromkeys(s.repo for s in sources if s.repo))
    if base:
        meta["base_model"] = base
    meta["vlalign"] = {"method": kind, "backbones": [
        {k: v for k, v in (("role", s.role), ("spec", s.hub_spec), ("trained_spec", s.spec),
                           ("repo", s.repo), ("revision", s.revision),
                           ("fetchable", s.fetchable)) if v is not None
         and not (k == "trained_spec" and v == s.hub_spec)} for s in sources]}
    index = model_index(name, records)
    if index:
        meta["model-index"] = index
    method = ("SAIL alignment heads (Zhang, Yang, Agrawal, CVPR 2025) on frozen backbones"
              if kind == "sail" else "a UTA student (Liu et al., TMLR 2024) distilled from a "
              "frozen CLIP-like teacher, used with the teacher's text tower")
    lines = [f"# {name}", "", f"A [vlalign](https://pypi.org/project/vlalign/) model: {method}. "
             "The backbones are named by spec and fetched when the model loads; only the "
             "trained weights are stored here.", "", "## Use", "", "```python",
             "import vlalign", "", f'model = vlalign.load_model("hf-hub:{repo_id}")',
             'probs = model.classify(images, ["a cat", "a dog"])', "```", "", "```bash",
             f"vlalign classify --model hf-hub:{repo_id} photo.jpg --labels cat dog", "```", "",
             "## Backbones", "", "| role | spec | source |", "| --- | --- | --- |"]
    for s in sources:
        where = (f"[{s.source}](https://huggingface.co/{s.repo}"
                 + (f"/tree/{s.revision})" if s.revision else ")")) if s.repo else s.note
        lines.append(f"| {s.role} | `{s.hub_spec}` | {where} |")
    for s in sources:
        if not s.fetchable:
            lines += ["", f"> **Warning**: the {s.role} backbone `{s.spec}` is {s.note}."]
    lines += ["", "## Training", ""]
    lines += [f"- {label}: {value}" for label, value in _facts(kind, config) if value is not None]
    table = [(r, headline_metrics(r["metrics"])) for r in records]
    table = [(r, m) for r, m in table if m]
    if table:
        lines += ["", "## Results", "", "| task | dataset | metric | value |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['task']} | {r.get('dataset', '')} | {k} | {v:.4f} |"
                  for r, m in table for k, v in m.items()]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines) + "\n"


# --- push --------------------------------------------------------------------------------------

def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise UserError(f"bad Hub repo id {repo_id!r}; expected NAME or ORG/NAME (letters, "
                        "digits, '-', '_', '.')")


def prepare_upload(run_dir: str | Path, folder: str | Path, repo_id: str,
                   results: str | Path | None = None, license: str | None = None) -> Path:
    """Write what ``push_to_hub`` uploads into ``folder`` (created; must be empty): the model
    files (configs with Hub-cache specs rewritten as ``ORG/NAME``) and README.md. ``results``:
    a results file or folder (default: RUN/results.json when there is one)."""
    _check_repo_id(repo_id)
    run_dir, folder = Path(run_dir), Path(folder)
    kind = model_kind(run_dir)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty; pass an empty or new folder")
    folder.mkdir(parents=True, exist_ok=True)
    config_name, weights_name = UTA_FILES if kind == "uta" else SAIL_FILES
    config = _read_json(run_dir / config_name)
    sources = []
    for key, record in _sources(kind, config):
        config[key], source = _publish_record(record, key)
        sources.append(source)
        if not source.fetchable:
            log.warning("%s backbone %s is %s", key, source.spec, source.note)
    atomic_write_json(folder / config_name, config)
    shutil.copyfile(run_dir / weights_name, folder / weights_name)
    for name in TEXT_TOWER_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)
    records: list[dict[str, Any]] = []
    if results is not None:
        records = records_for(read_results(results), run_dir)
        if not records:
            raise UserError(f"{results}: no results of {run_dir} there (no record names it as "
                            "model or pretrained); pass a file with this model's results only")
    elif (run_dir / RESULTS).is_file():
        records = records_for(read_results(run_dir / RESULTS), run_dir)
    card = model_card(repo_id, kind, config, sources, records, license)
    atomic_write_bytes(folder / CARD, card.encode())
    return folder


def _hub_error(action: str, error: BaseException) -> UserError:
    """A Hub failure as one line, with the usual fix."""
    text = " ".join(str(error).split()) or type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        text += " (log in with `hf auth login` or set HF_TOKEN)"
    if type(error).__name__ == "OfflineModeIsEnabled":
        text = "the Hub is switched off here (HF_HUB_OFFLINE=1)"
    return UserError(f"{action}: {text}")


def push_to_hub(run_dir: str | Path, repo_id: str, revision: str | None = None,
                private: bool = False, token: str | None = None,
                commit_message: str = DEFAULT_COMMIT_MESSAGE,
                results: str | Path | None = None, license: str | None = None) -> str:
    """Upload a finished run or saved model folder to the Hub repo ``repo_id`` (created if
    missing; ``revision``: a branch, created if missing) and return the commit's URL. Only the
    model files and a generated model card go up (see ``prepare_upload``)."""
    require("huggingface_hub", "hub")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="vlalign-push-") as tmp:
        folder = prepare_upload(run_dir, Path(tmp) / "upload", repo_id, results, license)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                     commit_message=commit_message, revision=revision)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001  (any Hub failure: one line, named)
            raise _hub_error(f"pushing {run_dir} to {repo_id} failed", error) from error
    return str(getattr(info, "commit_url", None) or info)


_push = push_to_hub  # ``push_to_hub`` is also a parameter name below (the transformers API)


def maybe_push(path: str | Path, push_to_hub: bool = False, repo_id: str | None = None,
               **hub_options: Any) -> str | None:
    """The ``save_pretrained(..., push_to_hub=True, repo_id=...)`` hook: after a model folder is
    written, push it (``repo_id`` defaults to the folder's name). Returns the commit URL."""
    if not push_to_hub:
        return None
    return _push(path, repo_id or Path(path).resolve().name, **hub_options)


def save_pretrained(model: Any, path: str | Path, push_to_hub: bool = False,
                    repo_id: str | None = None, **hub_options: Any) -> Path:
    """``model.save_pretrained(path)``, then push it to the Hub when ``push_to_hub``."""
    model.save_pretrained(path)
    maybe_push(path, push_to_hub, repo_id, **hub_options)
    return Path(path)


# --- resolve -----------------------------------------------------------------------------------

def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO[@REV]`` (the prefix optional) -> (repo id, revision or None)."""
    text = str(name).strip().removeprefix(HUB_SCHEME)
    repo, at, revision = text.partition("@")
    if not REPO_ID.match(repo) or (at and not revision.strip()):
        raise UserError(f"bad Hub model name {name!r}; expected {HUB_SCHEME}ORG/REPO or "
                        f"{HUB_SCHEME}ORG/REPO@REVISION")
    return repo, revision.strip() or None


def resolve_hub_model(name: str) -> Path:
    """The local folder of the vlalign model ``hf-hub:ORG/REPO[@REV]``: the cached snapshot, or a
    fresh download. Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable) only the local cache
    is used. Any failure is a one-line UserError naming the repository."""
    repo, revision = parse_hub_name(name)
    require("huggingface_hub", "hub")
    from huggingface_hub import snapshot_download


    offline = hub_offline() or not hub_reachable()
    where = repo + (f"@{revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo, revision=revision, local_files_only=offline,
                                        cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception as error:  # noqa: BLE001  (any Hub failure: one line, named)
        kind = type(error).__name__
        if kind == "RepositoryNotFoundError":
            raise UserError(f"Hub model {where!r} does not exist (or is private: log in with "
                            "`hf auth login` or set HF_TOKEN)") from None
        if kind == "RevisionNotFoundError":
            raise UserError(f"Hub model {repo!r} has no revision {revision!r}") from None
        if offline:
            raise UserError(f"Hub model {where!r} is not in the local Hub cache and the Hub is "
                            "offline (HF_HUB_OFFLINE=1 or unreachable); download it once online"
                            ) from None
        raise _hub_error(f"cannot download Hub model {where!r}", error) from None
    try:
        model_kind(folder)
    except UserError:
        raise UserError(f"Hub repo {where!r} is not a vlalign model (no {SAIL_FILES[0]} or "
                        f"{UTA_FILES[0]}); push one with `vlalign push RUN {repo}`") from None
    return folder


def describe(folder: str | Path) -> str:
    """The upload folder's files, one per line (what `vlalign push --out` prints)."""
    folder = Path(folder)
    return "\n".join(f"{p.name}  {p.stat().st_size} B" for p in sorted(folder.iterdir()))


__all__ = ["BackboneSource", "backbone_source", "cache_snapshot", "maybe_push", "model_card",
           "parse_hub_name", "prepare_upload", "push_to_hub", "read_results", "resolve_hub_model",
           "save_pretrained"]
