"""Where a feature store keeps its files, and the manifest that describes them.

A store holds one dataset encoded by one vision and one text backbone::

    DIR/manifest.json            request identity, dims, kinds, status, per-shard rows + sha256
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

from pathlib import Path

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
