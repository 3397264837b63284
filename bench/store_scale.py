"""Training from a feature store larger than RAM: peak RSS and pairs/s, cold and warm.

Builds a synthetic store in the real format (random but fixed fp16 features, seeded per shard:
1280-d image, two 384-d captions per pair), then trains SAIL heads over it with ``train_sail``,
each measurement in its own process so that its peak RSS is its own:

- train: SAIL steps (light linear heads, sigmoid loss over the batch; the B x B loss is most
  of the compute), with the share of time spent waiting for data;
- read: the same batch stream with no training, i.e. the data path's own ceiling;
- verify: sha256 of every shard (what ``verify_stores`` costs at start-up).

Each runs cold (the store's pages evicted from the page cache first, by posix_fadvise
DONTNEED per file) and, for train and read, warm (the store read into the page cache first;
skipped unless it fits in 3/4 of the free memory). Batches are random rows of the whole store
(a fresh permutation), so the reads are scattered.

    .venv/bin/python bench/store_scale.py                    # 200,000 pairs (0.8 GB), CI-sized
    .venv/bin/python bench/store_scale.py --pairs 5000000 --steps 200   # 20.5 GB, the full run

The store goes to --dir (default /tmp/vlalign-store-scale) and is reused by later runs of the
same size; delete it with --clean.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import machine, peak_rss_mb, print_table, write_results  # noqa: I001
from vlalign.store.layout import FORMAT_VERSION, MANIFEST, shard_dir, shard_file
from vlalign.utils.files import atomic_save_npy, atomic_write_json

IMAGE_DIM, TEXT_DIM, KINDS, SHARD = 1280, 384, ("raw", "rewritten"), 4096


def _write_shard(args: tuple[Path, int, int, int]) -> dict:
    """Shard ``index`` of a synthetic store: random fp16 rows seeded by (seed, index)."""
    root, index, rows, seed = args
    rng = np.random.default_rng([seed, index])
    images = rng.standard_normal((rows, IMAGE_DIM), dtype=np.float32).astype(np.float16)
    texts = rng.standard_normal((rows, len(KINDS), TEXT_DIM), dtype=np.float32)
    sha = {"images": atomic_save_npy(shard_file(root, index, "images"), images),
           "texts": atomic_save_npy(shard_file(root, index, "texts"), texts.astype(np.float16))}
    first = index * SHARD
    atomic_write_json(shard_file(root, index, "meta"), {
        "shard": index, "rows": rows, "keys": [str(first + i) for i in range(rows)],
        "labels": [-1] * rows, "captions": [["", ""]] * rows, "grid": None, "bad": [],
        "sha256": sha})
    return {"index": index, "rows": rows, "sha256": sha}


def build_store(root: Path, pairs: int, seed: int) -> float:
    """Write the store (skipped if a complete one of this size exists); returns seconds."""
    manifest_path = root / MANIFEST
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("rows") == pairs:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    shard_dir(root).mkdir(parents=True)
    start = time.perf_counter()
    jobs = [(root, k, min(SHARD, pairs - k * SHARD), seed) for k in range(-(-pairs // SHARD))]
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        shards = list(pool.map(_write_shard, jobs, chunksize=4))
    identity = {"spec": "synthetic", "identity": f"synthetic:seed={seed}"}
    atomic_write_json(manifest_path, {
        "format_version": FORMAT_VERSION, "status": "complete", "rows": pairs, "bad_items": 0,
        "dataset": {"name": f"synthetic[{pairs}]", "fingerprint": f"seed={seed}",
                    "items": pairs, "class_names": None},
        "vision": {**identity, "dim": IMAGE_DIM, "token_dim": None, "preprocess": {}},
        "text": {**identity, "dim": TEXT_DIM}, "caption_kinds": list(KINDS), "tokens": False,
        "dtype": "float16", "shard_size": SHARD, "batch_size": SHARD, "grid": None,
        "shards": shards})
    return time.perf_counter() - start


def store_files(root: Path) -> list[Path]:
    return sorted(p for p in shard_dir(root).iterdir() if p.suffix == ".npy")


def evict(root: Path) -> None:
    """Drop the store's clean pages from the page cache (no root needed)."""
    for path in store_files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def preload(root: Path) -> None:
    """Read every shard once, sequentially, so that the store sits in the page cache."""
    for path in store_files(root):
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 24):
                pass


def cached_fraction(root: Path) -> float | None:
    """Fraction of the store's bytes in the page cache (util-linux ``fincore``), if available."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE",
                          *map(str, store_files(root))], capture_output=True, text=True)
    pairs = [line.split() for line in out.stdout.splitlines() if line.strip()]
    cached, size = (sum(int(p[i]) for p in pairs) for i in (0, 1))
    return cached / size if size else None


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def train_worker(root: Path, steps: int, batch: int, threads: int) -> dict:
    """In a child: train light heads for ``steps`` and report peak RSS and the data rate."""
    from vlalign.config import from_dict
    from vlalign.sail.config import SailConfig
    from vlalign.sail.train import train_sail

    run = root.parent / f"run-{os.getpid()}"
    config = from_dict(SailConfig, {
        "train_stores": [str(root)], "vision_head": {"kind": "linear"},
        "text_head": {"kind": "linear"}, "embed_dim": 256, "batch_size": batch, "epochs": 100,
        "optim": {"lr": 1e-4}, "precision": "fp32", "log_every": 1, "checkpoint_every": 10**9,
        "num_threads": threads, "device": "cpu", "verify_stores": False, "seed": 1})
    start = time.perf_counter()
    try:
        train_sail(config, run, progress=False, max_steps=steps)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(run, ignore_errors=True)
    timed = lines[1:]  # the first step includes start-up
    data = sum(x["data_s"] for x in timed)
    total = data + sum(x["compute_s"] for x in timed)
    return {"pairs_per_s": len(timed) * batch / total, "data_wait": data / total,
            "wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def read_worker(root: Path, steps: int, batch: int) -> dict:
    """In a child: the prefetching batch stream alone, as fast as it delivers."""
    from vlalign.store import FeatureStore
    from vlalign.store.stream import BatchStream, StoreMix

    stream = BatchStream(StoreMix([FeatureStore(root)]), batch, list(KINDS), seed=1)
    start = time.perf_counter()
    for _ in stream.iterate(0, steps):
        pass
    seconds = time.perf_counter() - start
    return {"pairs_per_s": steps * batch / seconds, "wall_s": seconds,
            "peak_rss_mb": peak_rss_mb()}


def verify_worker(root: Path) -> dict:
    """In a child: time ``FeatureStore.verify`` (sha256 of every shard)."""
    from vlalign.store import FeatureStore

    start = time.perf_counter()
    FeatureStore(root).verify()
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in store_files(root))
    return {"verify_gb_per_s": size / seconds / 1e9, "wall_s": seconds,
            "peak_rss_mb": peak_rss_mb()}


def child(args: argparse.Namespace, task: str) -> dict:
    """Run one measurement in its own process; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--worker", task, "--dir", str(args.dir), "--steps",
               str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=50, help="timed training steps + 1")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vlalign-store-scale"))
    parser.add_argument("--clean", action="store_true", help="delete the store at the end")
    parser.add_argument("--worker", choices=["train", "read", "verify"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.dir / "store"
    if args.worker:
        workers = {"train": lambda: train_worker(root, args.steps, args.batch, args.threads),
                   "read": lambda: read_worker(root, args.steps, args.batch),
                   "verify": lambda: verify_worker(root)}
        print(json.dumps(workers[args.worker]()))
        return
    build_s = build_store(root, args.pairs, args.seed)
    size = sum(p.stat().st_size for p in store_files(root))
    print(f"store: {args.pairs:,} pairs, {size / 1e9:.2f} GB in {root}"
          + (f" (built in {build_s:.0f} s)" if build_s else " (reused)"), flush=True)
    rows = []
    for task, cache in [("read", "cold"), ("train", "cold"), ("read", "warm"),
                        ("train", "warm"), ("verify", "cold")]:
        if cache == "warm":
            if size > 0.75 * available_bytes():  # leave room for the process and the rest
                rows.append({"task": task, "cache": cache,
                             "error": "store does not fit in free memory"})
                continue
            preload(root)
        else:
            evict(root)
        cached = cached_fraction(root)
        rows.append({"task": task, "cache": cache, "cached_before": cached, **child(args, task)})
        print(json.dumps(rows[-1]), flush=True)
    info = {"pairs": args.pairs, "store_gb": size / 1e9, "batch": args.batch,
            "steps": args.steps, "build_s": build_s}
    print(f"\nmachine: {machine()}\n{info}")
    print_table(rows, ["task", "cache", "cached_before", "pairs_per_s", "data_wait",
                       "verify_gb_per_s",
                       "peak_rss_mb", "wall_s", "error"])
    name = "store_scale" if args.pairs == 200_000 else f"store_scale_{args.pairs}"
    path = write_results(name, {"machine": machine(), **info, "rows": rows})
    print(f"\nwritten {path}")
    if args.clean:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
