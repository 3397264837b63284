"""Where a feature store keeps its files, and the manifest that describes them.

A store holds one dataset encoded by one vision and one text backbone::

    DIR/manifest.json            request identity, dims, kinds, status, per-shard rows + sha256;
                                 vision.preprocess is the image transform the features were made
                                 with (``Preprocess.to_dict()``: resize, crop, interpolation,
                                 mean/std), which a resumed encode and mixed stores must share
    DIR/shards/00007.images.npy  n x D_img pooled image features (fp16 by default)
    DIR/shards/00007.texts.npy   n x K x D_txt caption features, K = len(caption_kinds)
    DIR/shards/00007.tokens.npy  n x N x D_tok token maps (only with --tokens)
    DIR/shards/00007.meta.json   keys, labels, captions, skipped items, checksums; written last,
                                 so its presence marks the shard complete
    DIR/bad_items.jsonl          every skipped item with its reason (after completion)
    DIR/class_prompts.npy        C x T x D_txt features of class-name prompts (labelled data
                                 only), so zero-shot evaluation needs no text backbone

Shard k covers source items [k * shard_size, (k + 1) * shard_size); rows of skipped items are
absent, so row r of the store is the r-th good item. The image-to-captions index is implicit:
image row r owns caption rows (r, 0..K-1), one per kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
BAD_ITEMS = "bad_items.jsonl"
PROMPTS = "class_prompts.npy"
FORMAT_VERSION = 1
ARRAYS = ("images", "texts", "tokens")


def shard_dir(root: Path) -> Path:
    return root / "shards"


def shard_file(root: Path, index: int, what: str) -> Path:
    """Path of one shard's array ('images', 'texts', 'tokens') or 'meta' file."""
    suffix = "json" if what == "meta" else "npy"
    return shard_dir(root) / f"{index:05d}.{what}.{suffix}"


def transform_difference(recorded: dict[str, Any] | None, wanted: dict[str, Any] | None,
                         names: tuple[str, str] = ("stored", "now")) -> str | None:
    """None when two recorded image transforms (``vision.preprocess``) are equal, else what
    differs, in a few words for a one-line error (``names`` label the two). A record from
    before vlalign kept resize and crop (size, mean, std, interpolation only) never equals a
    current one."""
    if recorded == wanted:
        return None
    a, b = names
    old = [name for name, record in zip(names, (recorded, wanted))
           if not record or "resize" not in record]
    if old:
        return (f"the {' and '.join(old)} one records no resize/crop (made before vlalign "
                f"followed each library's transform): {a} {_describe(recorded)}, {b} "
                f"{_describe(wanted)}")
    keys = [k for k in {**wanted, **recorded} if recorded.get(k) != wanted.get(k)]
    return ", ".join(f"{k}: {a} {json.dumps(recorded.get(k))}, {b} {json.dumps(wanted.get(k))}"
                     for k in keys)


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "none recorded"
    if "resize" not in record:
        return f"square resize to {record.get('size')}"
    crop = f", crop {record['crop']}" if record.get("crop") else ""
    return f"{record['resize']} {json.dumps(record['resize_size'])}{crop}"
