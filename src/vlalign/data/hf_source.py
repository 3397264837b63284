"""Hugging Face ``datasets`` as sources: ``hf:PATH_OR_REPO[?split=&config=&image=&caption=...]``.

``PATH_OR_REPO`` is, in this order:

1. a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
   ``datasets.load_from_disk``), or any other local folder or file ``datasets.load_dataset``
   reads (a dataset repo cloned or downloaded, a folder of parquet/csv/json/image files);
2. a Hub dataset id (``ORG/NAME``) whose repo is in the local Hub cache (a snapshot fetched
   earlier, e.g. by ``huggingface-cli download --repo-type dataset``), or prepared in the
   ``datasets`` cache by an earlier ``load_dataset``: both read without the network;
3. otherwise the Hub itself, after a connect probe of about two seconds; offline this is a
   one-line error, not minutes of retries.

``split`` picks the split of a dataset with several (default ``train``, or the only one);
``config`` the Hub configuration (``load_dataset``'s ``name``). The columns are read as for
parquet (``vlalign.data.parquet_source``): image bytes, ``Image`` features (decoded by us, so a
corrupt image is a counted BadItem), paths; ``ClassLabel`` names become the class names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlalign.data.parquet_source import OPTIONS, TableSource, resolve_columns
from vlalign.errors import DataError, UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.hf_hub import REPO_ID
from vlalign.utils.optional import require

HF_OPTIONS = {**OPTIONS, "split": Option(""), "config": Option("")}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes


class HFDataset(TableSource):
    """The rows of one split of a ``datasets.Dataset`` (see the module docstring)."""

    def __init__(self, dataset: Any, values: dict[str, Any], name: str, base: Path) -> None:
        columns = resolve_columns(list(dataset.column_names), values, name)
        arrow = dataset.with_format("arrow")
        table = {column: arrow[column].to_pylist() for column in columns.read()}
        self._images = dataset.select_columns([columns.image]).with_format("arrow")
        self.total = len(dataset)
        self.name = name
        digest = hashlib.sha1(f"hf\n{json.dumps(values, sort_keys=True)}\n"
                              f"{dataset._fingerprint}\n".encode())
        for cache in dataset.cache_files:
            stat = os.stat(cache["filename"])
            digest.update(f"{cache['filename']}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        self.fingerprint = digest.hexdigest()
        self._setup(columns, table, dataset.features.to_dict(),
                    Path(values.get("root") or base), name)

    def __len__(self) -> int:
        return self.total

    def _key(self, index: int, where: str) -> str:
        return str(index)

    def _image_cell(self, index: int) -> tuple[Any, str]:
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for {self.name} ({self.total} rows)")
        return self._images[index:index + 1].column(0)[0].as_py(), f"{self.name}:{index}"


def create_hf(spec: Spec) -> HFDataset:
    """The source of an ``hf:`` spec (parsed by the registry)."""
    values = validate_options(spec, HF_OPTIONS)
    loaded, base = open_dataset(spec.name, values["config"])
    dataset = pick_split(loaded, values["split"], spec.name)
    return HFDataset(dataset, values, str(Spec(spec.scheme, spec.name, options=spec.options)),
                     base)


def open_dataset(name: str, config: str = "") -> tuple[Any, Path]:
    """(Dataset or DatasetDict, folder relative image paths resolve against); see the module
    docstring for the order in which ``name`` is tried."""
    datasets = require("datasets", "data")
    path = Path(name).expanduser()
    options = {"name": config} if config else {}
    if path.exists():
        folder = path if path.is_dir() else path.parent
        if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
            if config:
                raise UserError(f"hf:{name} was saved with save_to_disk: it has no configs "
                                "(drop ?config=)")
            return _load(name, datasets.load_from_disk, str(path)), folder
        return _load(name, datasets.load_dataset, str(path), **options), folder
    if not REPO_ID.match(name):
        raise UserError(f"hf:{name}: no such file or folder (and not a Hub dataset id ORG/NAME)")
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        return _load(name, datasets.load_dataset, str(snapshot), **options), snapshot
    if _prepared_in_cache(name):
        with _offline():
            return _load(name, datasets.load_dataset, name, **options), Path.cwd()
    from vlalign.utils.hf_hub import hub_reachable

    if not hub_reachable():
        raise UserError(f"hf:{name} is not a local folder, not in the local Hugging Face cache, "
                        "and the hub is unreachable (offline); pass a folder saved with "
                        "save_to_disk, a downloaded dataset repo, or parquet:FILES")
    return _load(name, datasets.load_dataset, name, **options), Path.cwd()


def _load(name: str, loader: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a ``datasets`` loader; its errors become one line naming the spec."""
    try:
        return loader(*args, **kwargs)
    except Exception as error:  # noqa: BLE001  (datasets raises many kinds; all mean: cannot)
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise DataError(f"hf:{name}: cannot load it with datasets "
                        f"({type(error).__name__}: {first})") from None


def _cached_snapshot(repo: str) -> Path | None:
    """The local Hub-cache snapshot of dataset repo ``repo``, or None."""
    if "/" not in repo:
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001  (any miss means: not cached)
        return None


def _prepared_in_cache(repo: str) -> bool:
    """Whether an earlier ``load_dataset(repo)`` left prepared Arrow files in the datasets cache
    (``ORG___NAME/CONFIG/VERSION/HASH``, as datasets' offline fallback looks for them)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = repo.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


@contextmanager
def _offline() -> Iterator[None]:
    """datasets in offline mode for one call (it then reads its cache without retries)."""
    import datasets

    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def pick_split(loaded: Any, split: str, name: str) -> Any:
    """The split asked for of a DatasetDict (default ``train``, or its only split); a single
    Dataset is its own split."""
    if not hasattr(loaded, "keys"):  # a Dataset
        own = getattr(loaded, "split", None)
        if split and own is not None and str(own) != split:
            raise UserError(f"hf:{name} holds only the {own} split, not {split!r}")
        return loaded
    splits = list(loaded.keys())
    if not split:
        split = "train" if "train" in splits or len(splits) != 1 else splits[0]
    if split not in splits:
        raise UserError(f"hf:{name} has no split {split!r}; valid: {', '.join(splits)} "
                        "(pick one with ?split=NAME)")
    return loaded[split]
