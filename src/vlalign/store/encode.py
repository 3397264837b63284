"""Pre-encode a data source once into a sharded, resumable feature store.

Decoding and preprocessing run in DataLoader workers while the main process runs the frozen
backbones, so data loading hides behind compute. Each shard is written atomically and marked
complete by its meta file last; a rerun after a crash (even kill -9) skips complete shards and
recomputes the rest with the same batch boundaries, so the result equals an uninterrupted run.

Under torchrun the shards still to do are dealt round-robin to the ranks, which write them into
the same folder (a filesystem all ranks share); rank 0 then writes the manifest, class prompts
and bad-item list exactly as one process would, so the arrays equal a one-process encode's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from vlalign.backbones.base import TextEncoder, VisionEncoder, normalise, to_uint8
from vlalign.data.base import RAW, BadItem, Source
from vlalign.data.templates import format_prompt, templates_for
from vlalign.errors import DataError, StoreError
from vlalign.store.layout import (
    BAD_ITEMS,
    FORMAT_VERSION,
    MANIFEST,
    PROMPTS,
    shard_dir,
    shard_file,
    transform_difference,
)
from vlalign.utils.distributed import (
    gather_objects,
    init_from_env,
    on_rank_zero,
    raise_if_any_failed,
)
from vlalign.utils.files import (
    atomic_save_npy,
    atomic_save_npy_parts,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    sha256_file,
)
from vlalign.utils.workers import default_workers

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class EncodeOptions:
    """Knobs of one encode run; the ones that change the result are part of the store identity."""

    tokens: bool = False
    dtype: str = "float16"
    shard_size: int = 4096
    batch_size: int = 64
    text_batch_size: int = 256
    num_workers: int | None = None  # decoding processes; None: by device (default_workers)
    max_bad_fraction: float = 0.05
    progress: bool = True
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast of both backbones) | auto
    overlap_captions: bool | None = None  # encode captions beside images (None: on a GPU)


class _Decoded(Dataset):
    """Loads item ``i`` and resizes and crops it to uint8 pixels in a worker (a quarter of
    float32's bytes between processes; normalised on the device); a bad item becomes an
    (index, reason)."""

    def __init__(self, source: Source, vision: VisionEncoder, kinds: list[str]):
        self.source, self.preprocess, self.kinds = source, vision.preprocess, kinds

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            example = self.source.load(index)
            # Every row holds one caption per kind: a kind the item lacks repeats its raw
            # caption, and ``real`` says which are its own (counted into the manifest's
            # caption_counts, so training can leave a kind out that no item has).
            real = [bool((example.captions.get(kind) or "").strip()) for kind in self.kinds]
            captions = [example.captions[kind] if own else example.captions.get(RAW, "")
                        for kind, own in zip(self.kinds, real)]
            if not all(c and c.strip() for c in captions):
                raise BadItem("empty caption")
            pixels = to_uint8(example.image, self.preprocess)
        except BadItem as bad:
            return {"index": index, "bad": str(bad) or "bad item"}
        label = -1 if example.label is None else int(example.label)
        return {"index": index, "key": example.key, "pixels": pixels, "captions": captions,
                "real": real, "label": label}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [item for item in items if "bad" not in item]
    return {
        "good": good and {
            "index": [item["index"] for item in good],
            "key": [item["key"] for item in good],
            "pixels": torch.stack([item["pixels"] for item in good]),
            "captions": [item["captions"] for item in good],
            "real": [item["real"] for item in good],
            "label": [item["label"] for item in good],
        },
        "bad": [(item["index"], item["bad"]) for item in items if "bad" in item],
        "last_index": items[-1]["index"],
    }


def cast_features(features: np.ndarray, dtype: type, what: str) -> np.ndarray:
    """``features`` in the store's dtype; StoreError instead of silently storing inf or zeros
    when float16 cannot hold them (features above 65504, or rows that underflow to all zero).
    The cast and the checks run in torch: numpy's float16 cast is single-threaded and about
    7 s per GB of token maps here, which made it most of an encode's cost."""
    if dtype is not np.float16 or not features.size:
        return features.astype(dtype)
    source = torch.from_numpy(np.ascontiguousarray(features))
    cast = source.to(torch.float16)
    flat, flat_cast = source.reshape(len(source), -1), cast.reshape(len(cast), -1)
    lost = (flat.abs().amax(dim=1) > 0) & ~flat_cast.any(dim=1)
    if not bool(torch.isfinite(cast).all()) or bool(lost.any()):
        peak = float(source.abs().max())
        raise StoreError(f"{what} features do not fit float16 (largest |value| {peak:.3g}); "
                         "encode with --dtype float32")
    return cast.numpy()


class _ShardBatches(Sampler[list[int]]):
    """Fixed batches that never cross a shard boundary, for the shards still to do."""

    def __init__(self, shards: list[int], shard_size: int, total: int, batch_size: int):
        self.batches = []
        for shard in shards:
            stop = min(total, (shard + 1) * shard_size)
            for start in range(shard * shard_size, stop, batch_size):
                self.batches.append(list(range(start, min(stop, start + batch_size))))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


ENCODE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_encode_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU, fp32 on the CPU (where bf16 changes features for little gain
    with the default ONNX runtime); UserError-style StoreError for an unknown name."""
    if name not in ENCODE_PRECISIONS:
        raise StoreError(f"precision {name!r} is not one of {', '.join(ENCODE_PRECISIONS)}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def _autocast(precision: str, device: torch.device) -> Any:
    """The backbones' autocast context for a resolved precision (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def store_identity(source: Source, vision: VisionEncoder, text: TextEncoder,
                   kinds: list[str], options: EncodeOptions,
                   specs: tuple[str, str]) -> dict[str, Any]:
    """Everything that determines the store's content: a rerun must match it exactly."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": source.name, "fingerprint": source.fingerprint, "items": len(source),
                    "class_names": source.class_names},
        "vision": {"spec": specs[0], "identity": vision.identity, "dim": vision.dim,
                   "token_dim": vision.token_dim, "preprocess": vision.preprocess.to_dict()},
        "text": {"spec": specs[1], "identity": text.identity, "dim": text.dim},
        "caption_kinds": kinds,
        "tokens": options.tokens,
        "dtype": options.dtype,
        "shard_size": options.shard_size,
        "batch_size": options.batch_size,
        # reduced-precision features differ from fp32 ones: recorded when used (older stores,
        # all fp32, keep their identity)
        **({"precision": options.precision} if options.precision != "fp32" else {}),
    }


def _check_or_start(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.exists():
        manifest = read_json(path)
        if manifest.get("imported"):  # features made outside vlalign (import_embeddings.py)
            raise StoreError(f"{out} holds embeddings imported from "
                             f"{manifest['imported'].get('from')}, made outside vlalign; "
                             "encoding into it would mix them with this encoder's features: "
                             "choose another --out")
        difference = transform_difference((manifest.get("vision") or {}).get("preprocess"),
                                          identity["vision"]["preprocess"])
        if difference:
            raise StoreError(f"{out} holds image features made with another image transform "
                             f"({difference}); encoding more into it would mix the two: choose "
                             "another --out or delete it")
        stored, wanted = manifest.get("precision", "fp32"), identity.get("precision", "fp32")
        if stored != wanted:
            raise StoreError(f"{out} already holds a store with a different precision "
                             f"({stored} != {wanted}); choose another --out or delete it")
        check_same_identity(out, manifest, identity, "a store")
        return manifest
    return start_manifest(out, identity, "encoding")


def check_same_identity(out: Path, manifest: dict[str, Any], identity: dict[str, Any],
                        what: str) -> None:
    """StoreError naming the first identity field in which ``out``'s manifest differs: resuming
    into it would mix two kinds of rows."""
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise StoreError(
                f"{out} already holds {what} with a different {key} "
                f"({json.dumps(manifest.get(key))[:120]} != {json.dumps(value)[:120]}); "
                "choose another --out or delete it")


def start_manifest(out: Path, identity: dict[str, Any], status: str) -> dict[str, Any]:
    """A new store folder (which must be empty or missing) with its manifest in ``status``."""
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists, is not empty and has no {MANIFEST}; choose another --out")
    shard_dir(out).mkdir(parents=True, exist_ok=True)
    manifest = {**identity, "status": status}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _shard_complete(out: Path, shard: int) -> bool:
    """True if the shard's meta file exists and every array matches its checksum."""
    try:
        digests = read_json(shard_file(out, shard, "meta"))["sha256"].items()
        return all(sha256_file(shard_file(out, shard, what)) == digest
                   for what, digest in digests)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # missing or damaged: encode the shard again


class _ShardBuffer:
    """Collects one shard's rows in order and writes them atomically when the shard is done."""

    def __init__(self, shard: int, vision: VisionEncoder):
        self.shard, self.vision = shard, vision
        self.images: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []
        self.keys: list[str] = []
        self.labels: list[int] = []
        self.captions: list[list[str]] = []
        self.real: list[list[bool]] = []  # per row and kind: the item's own caption?
        self.bad: list[tuple[int, str]] = []
        self.grid: list[int] | None = None

    def flush(self, out: Path, text: TextEncoder, options: EncodeOptions, kinds: list[str]) -> int:
        dtype = DTYPES[options.dtype]
        images = self.images or [np.zeros((0, self.vision.dim), dtype)]
        with _autocast(options.precision, getattr(text, "device", torch.device("cpu"))):
            texts = encode_captions(text, self.captions, len(kinds), options.text_batch_size)
        sha = {"images": atomic_save_npy_parts(shard_file(out, self.shard, "images"), images),
               "texts": atomic_save_npy(shard_file(out, self.shard, "texts"),
                                        cast_features(texts, dtype, "caption"))}
        if options.tokens:
            tokens = self.tokens or [np.zeros((0, 0, self.vision.token_dim), dtype)]
            sha["tokens"] = atomic_save_npy_parts(shard_file(out, self.shard, "tokens"),
                                                  tokens)
        counts = {kind: sum(row[j] for row in self.real) for j, kind in enumerate(kinds)}
        meta = {"shard": self.shard, "rows": len(self.keys), "keys": self.keys,
                "labels": self.labels, "captions": self.captions, "caption_counts": counts,
                "grid": self.grid,
                "bad": [{"index": i, "reason": r} for i, r in self.bad], "sha256": sha}
        atomic_write_json(shard_file(out, self.shard, "meta"), meta)
        return len(self.keys)


def encode_captions(text: TextEncoder, captions: list[list[str]], kinds: int,
                    batch_size: int) -> np.ndarray:
    """Encode every caption once (duplicates share one forward) -> n x K x D float32."""
    unique = sorted({c for row in captions for c in row})
    position = {c: i for i, c in enumerate(unique)}
    vectors = np.zeros((len(unique), text.dim), np.float32)
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        vectors[start:start + len(chunk)] = text.encode(chunk).float().cpu().numpy()
    rows = np.array([[position[c] for c in row] for row in captions], dtype=np.int64)
    return vectors[rows.reshape(-1)].reshape(len(captions), kinds, text.dim)


def _shard_items(shard: int, shard_size: int, total: int) -> int:
    return min(total, (shard + 1) * shard_size) - shard * shard_size


def _shards_to_do(out: Path, num_shards: int, rank: int, world_size: int) -> list[int]:
    """Incomplete shards; each rank checksums every world_size-th shard, then all agree."""
    mine = [k for k in range(rank, num_shards, world_size) if not _shard_complete(out, k)]
    return sorted(k for part in gather_objects(mine) for k in part)


def encode_store(source: Source, vision: VisionEncoder, text: TextEncoder, out: Path,
                 kinds: list[str], specs: tuple[str, str],
                 options: EncodeOptions | None = None) -> dict[str, Any]:
    """Encode ``source`` into ``out`` (resuming if it is a partial store of the same request).

    ``specs`` are the (vision, text) spec strings, recorded so a model can rebuild the backbones.
    Under torchrun every rank calls this with the same arguments; all return the manifest.
    """
    options = options or EncodeOptions()
    device = getattr(vision, "device", torch.device("cpu"))
    options = replace(options, precision=resolve_encode_precision(options.precision, device),
                      num_workers=default_workers(device.type) if options.num_workers is None
                      else options.num_workers)
    out = Path(out)
    rank, world_size = init_from_env()
    identity = store_identity(source, vision, text, kinds, options, specs)
    manifest = on_rank_zero(lambda: _check_or_start(out, identity))
    if manifest.get("status") == "complete":
        log.info("%s is already complete", out)
        return manifest
    total = len(source)
    num_shards = max(1, -(-total // options.shard_size))
    todo = _shards_to_do(out, num_shards, rank, world_size)
    mine = todo[rank::world_size]
    log.info("encoding %s: %d items, %d shards (%d to do%s)", source.name, total, num_shards,
             len(todo), f", {len(mine)} on rank {rank}" if world_size > 1 else "")
    seen, error, start_time = 0, None, time.perf_counter()
    try:
        seen = _encode_shards(source, vision, text, out, kinds, options, mine,
                              progress=options.progress and rank == 0)
    except Exception as caught:  # every rank must hear of it, or the others wait forever
        error = caught
    raise_if_any_failed(error)
    seen = sum(gather_objects(seen))
    elapsed = time.perf_counter() - start_time
    return on_rank_zero(lambda: _finish(out, manifest | _encode_class_prompts(out, source, text),
                                        num_shards, options, seen, elapsed))


def _encode_shards(source: Source, vision: VisionEncoder, text: TextEncoder, out: Path,
                   kinds: list[str], options: EncodeOptions, shards: list[int],
                   progress: bool) -> int:
    """Encode and write ``shards`` (each complete or not at all); returns the items seen."""
    total = len(source)
    device = getattr(vision, "device", torch.device("cpu"))
    loader = DataLoader(_Decoded(source, vision, kinds),
                        batch_sampler=_ShardBatches(shards, options.shard_size, total,
                                                    options.batch_size),
                        num_workers=options.num_workers, collate_fn=_collate,
                        prefetch_factor=4 if options.num_workers else None,
                        pin_memory=device.type == "cuda")
    bar = tqdm(total=sum(_shard_items(k, options.shard_size, total) for k in shards),
               unit="img", disable=not progress, desc=f"encode {source.name}",
               dynamic_ncols=True)
    seen, bad_count = 0, 0
    buffer: _ShardBuffer | None = None
    # A finished shard's captions are encoded and written while the next shard's images run
    # (a GPU's vision forward then never waits on tokenisation); one shard at a time.
    overlap = options.overlap_captions
    overlap = device.type == "cuda" if overlap is None else overlap
    flusher = ThreadPoolExecutor(max_workers=1) if overlap else None
    pending: Future | None = None
    try:
        for batch in loader:
            shard, buffer, n, bad = _encode_batch(batch, buffer, vision, device, options)
            seen, bad_count = seen + n, bad_count + bad
            bar.update(n)
            bar.set_postfix(bad=bad_count, refresh=False)
            if seen >= 200 and bad_count > options.max_bad_fraction * seen:
                raise DataError(f"{source.name}: {bad_count} of {seen} items are unusable "
                                f"(more than --max-bad-fraction {options.max_bad_fraction}); "
                                f"first: {buffer.bad[:1] or 'see earlier shards'}")
            if batch["last_index"] == min(total, (shard + 1) * options.shard_size) - 1:
                if flusher is None:
                    buffer.flush(out, text, options, kinds)
                else:
                    if pending is not None:
                        pending.result()  # raises the previous flush's error, if any
                    pending = flusher.submit(buffer.flush, out, text, options, kinds)
                buffer = None
        if pending is not None:
            pending.result()
    finally:
        if flusher is not None:
            flusher.shutdown(wait=True)
    bar.close()
    return seen


def _encode_batch(batch: dict[str, Any], buffer: _ShardBuffer | None, vision: VisionEncoder,
                  device: torch.device, options: EncodeOptions
                  ) -> tuple[int, _ShardBuffer, int, int]:
    """Run the vision backbone on one loader batch into its shard's buffer; returns (shard,
    buffer, items seen, bad items)."""
    shard = batch["last_index"] // options.shard_size
    if buffer is None or buffer.shard != shard:
        buffer = _ShardBuffer(shard, vision)
    buffer.bad.extend(batch["bad"])
    good = batch["good"]
    if good:
        pixels = normalise(good["pixels"].to(device, non_blocking=True), vision.preprocess)
        with _autocast(options.precision, device):
            result = vision.encode(pixels, tokens=options.tokens)
        dtype = DTYPES[options.dtype]  # cast per batch: a shard is never held in float32
        buffer.images.append(cast_features(result.pooled.float().cpu().numpy(), dtype, "image"))
        if options.tokens:
            buffer.tokens.append(cast_features(result.tokens.float().cpu().numpy(), dtype,
                                               "token"))
            buffer.grid = list(result.grid)
        buffer.keys.extend(good["key"])
        buffer.labels.extend(good["label"])
        buffer.captions.extend(good["captions"])
        buffer.real.extend(good["real"])
    n = len(batch["bad"]) + (len(good["index"]) if good else 0)
    return shard, buffer, n, len(batch["bad"])


def _encode_class_prompts(out: Path, source: Source, text: TextEncoder) -> dict[str, Any]:
    """For labelled sources, store class-name prompt features (C x T x D) for zero-shot eval."""
    if not source.class_names:
        return {}
    templates = templates_for(source.name)
    prompts = [format_prompt(t, c) for c in source.class_names for t in templates]
    features = text.encode(prompts).float().cpu().numpy()
    features = features.reshape(len(source.class_names), len(templates), text.dim)
    digest = atomic_save_npy(out / PROMPTS, features.astype(np.float32))
    return {"prompt_templates": templates, "prompts_sha256": digest}


def _finish(out: Path, manifest: dict[str, Any], num_shards: int, options: EncodeOptions,
            seen_now: int, elapsed: float) -> dict[str, Any]:
    shards, bad_lines, rows_total, grid = [], [], 0, None
    counts: dict[str, int] | None = dict.fromkeys(manifest["caption_kinds"], 0)
    for k in range(num_shards):
        if not shard_file(out, k, "meta").exists():
            raise StoreError(f"shard {k} of {out} is missing after encoding; under torchrun "
                             "every rank must write to the same shared filesystem")
        meta = read_json(shard_file(out, k, "meta"))
        shards.append({"index": k, "rows": meta["rows"], "sha256": meta["sha256"]})
        rows_total += meta["rows"]
        grid = grid or meta.get("grid")
        shard_counts = meta.get("caption_counts")  # absent in shards of older encodes
        if counts is not None and shard_counts is not None:
            counts = {kind: n + int(shard_counts.get(kind, 0)) for kind, n in counts.items()}
        else:
            counts = None
        bad_lines += [json.dumps({"shard": k, **b}) for b in meta["bad"]]
    total = manifest["dataset"]["items"]
    if total and len(bad_lines) > options.max_bad_fraction * total:
        raise DataError(f"{manifest['dataset']['name']}: {len(bad_lines)} of {total} items are "
                        f"unusable (more than --max-bad-fraction {options.max_bad_fraction}); "
                        f"see {out / 'shards'}/*.meta.json")
    atomic_write_bytes(out / BAD_ITEMS, "".join(line + "\n" for line in bad_lines).encode())
    manifest = {**manifest, "status": "complete", "rows": rows_total, "bad_items": len(bad_lines),
                "grid": grid, "caption_counts": counts, "shards": shards,
                "last_run": {"items_encoded": seen_now, "seconds": round(elapsed, 2)}}
    atomic_write_json(out / MANIFEST, manifest)
    if bad_lines:
        log.warning("%d items skipped (listed in %s)", len(bad_lines), out / BAD_ITEMS)
    if counts is not None:
        _report_caption_kinds(out, counts, rows_total)
    return manifest


def _report_caption_kinds(out: Path, counts: dict[str, int], rows: int) -> None:
    """One line on the caption kinds found, and a warning for a kind no item has."""
    log.info("%s: caption kinds found: %s", out,
             ", ".join(f"{kind} {n}/{rows}" for kind, n in counts.items()))
    missing = [kind for kind, n in counts.items() if n == 0 and kind != RAW]
    if rows and missing:
        log.warning("%s: no item has a %s caption (those rows repeat the raw caption); SAIL "
                    "training on this store uses only %s", out,
                    " or ".join(repr(k) for k in missing),
                    ", ".join(repr(k) for k, n in counts.items() if n))
