"""Compose a store from the image side of one store and the text side of another.

Probing a V x T grid of encoders needs every (vision, text) pair's features, but each image
encoder need only see the images once and each text encoder the captions once. Two stores of the
same data (same fingerprint, shard size, rows and keys) are combined into a third whose image
shards link to the first and whose caption shards (and class prompts) link to the second, so
nothing is copied or re-encoded and the result is an ordinary store for training and evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlalign.errors import StoreError
from vlalign.store.layout import MANIFEST, PROMPTS, shard_dir, shard_file
from vlalign.store.reader import FeatureStore
from vlalign.utils.files import atomic_write_json, read_json


def _check_same_rows(images: FeatureStore, texts: FeatureStore) -> None:
    a, b = images.manifest, texts.manifest
    for what, left, right in (("data", a["dataset"]["fingerprint"], b["dataset"]["fingerprint"]),
                              ("shard size", a["shard_size"], b["shard_size"]),
                              ("shard rows", [s["rows"] for s in a["shards"]],
                               [s["rows"] for s in b["shards"]])):
        if left != right:
            raise StoreError(f"cannot compose {images.path} with {texts.path}: different {what}")
    if images.keys != texts.keys:
        raise StoreError(f"cannot compose {images.path} with {texts.path}: their rows differ "
                         "(different items were skipped)")


def _link(target: Path, link: Path) -> None:
    """A relative symlink ``link -> target`` (replacing an older one)."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def compose_store(images: FeatureStore, texts: FeatureStore, out: Path) -> FeatureStore:
    """A store at ``out`` with ``images``'s image features and ``texts``'s caption features."""
    _check_same_rows(images, texts)
    out = Path(out)
    manifest = dict(images.manifest)
    if (out / MANIFEST).exists():
        existing = read_json(out / MANIFEST)
        if (existing["vision"] == manifest["vision"] and existing["text"] == texts.manifest["text"]
                and existing["dataset"] == manifest["dataset"]):
            return FeatureStore(out)
    shard_dir(out).mkdir(parents=True, exist_ok=True)
    shards = []
    for image_shard, text_shard in zip(images.manifest["shards"], texts.manifest["shards"]):
        index = image_shard["index"]
        _link(shard_file(images.path, index, "images"), shard_file(out, index, "images"))
        _link(shard_file(texts.path, index, "texts"), shard_file(out, index, "texts"))
        sha = {"images": image_shard["sha256"]["images"], "texts": text_shard["sha256"]["texts"]}
        meta = read_json(shard_file(texts.path, index, "meta"))
        atomic_write_json(shard_file(out, index, "meta"), {**meta, "sha256": sha, "grid": None})
        shards.append({"index": index, "rows": image_shard["rows"], "sha256": sha})
    prompt_keys = ("prompt_templates", "prompts_sha256")
    manifest = {k: v for k, v in manifest.items() if k not in prompt_keys}
    manifest |= {k: texts.manifest[k] for k in prompt_keys if k in texts.manifest}
    if (texts.path / PROMPTS).exists():
        _link(texts.path / PROMPTS, out / PROMPTS)
    manifest |= {"text": texts.manifest["text"], "caption_kinds": texts.manifest["caption_kinds"],
                 "caption_counts": texts.manifest.get("caption_counts"), "tokens": False,
                 "grid": None, "shards": shards,
                 "composed_from": {"images": str(images.path), "texts": str(texts.path)}}
    atomic_write_json(out / MANIFEST, manifest)
    return FeatureStore(out)
