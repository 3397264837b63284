"""The engine's overhead: `vlalign train sail` against a plain in-RAM loop, as whole processes.

Engine: ``python -m vlalign train sail --store ... --config CONFIG --out TMP`` with ``epochs`` set
so that its schedule is exactly ``--steps`` steps (and ``--max-steps`` to match). Bare:
``bench/bare_sail_loop.py`` with the same stores, recipe and step count: the stores read into RAM,
the same heads, loss, Lion, schedule, clipping, batch size, seed and autocast dtype, the heads
saved at the end. Both get the precision resolved once here (so a noisy ``auto`` cannot pick
different dtypes) and ``--threads``. Wall time is from spawn to exit: start-up, imports, reading
the stores and everything the engine adds (checksums, checkpoints, metrics, prefetching) count.
Runs alternate engine, bare, engine, bare, ... (``--pairs`` pairs), each into a fresh temporary
folder; the stores and the libraries are read once beforehand so no run pays a cold page cache.

Stores: the demo's (Fashion-MNIST train[:20000] + emoji train, 23,002 pairs, MobileNetV2 +
MiniLM). Without ``--stores`` they are encoded into bench/results/stores/ first (skipped when
complete; an interrupted encode resumes), once: about 2.5 minutes on 2 CPU cores (measured on
a 2-core AMD EPYC: emoji 37 s, Fashion-MNIST 103 s).

    .venv/bin/python bench/train_overhead.py [--pairs 3] [--steps 110] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_bf16_flags, machine, print_table, write_results  # noqa: I001
from vlalign.config import load_config
from vlalign.errors import StoreError
from vlalign.sail.config import SailConfig
from vlalign.store.reader import FeatureStore
from vlalign.train.precision import resolve_precision

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VISION, TEXT = "bundled:mobilenetv2", "bundled:minilm"  # as vlalign/demo.py
DEMO_STORES = (("fashion_train", "fashion-mnist:train[:20000]"), ("emoji_train", "emoji:train"))


def encode_demo_stores(root: Path) -> list[Path]:
    """The demo's training stores under ``root``, encoded with `vlalign encode` where missing."""
    paths = []
    for name, spec in DEMO_STORES:
        out = root / name
        try:
            FeatureStore(out)
        except StoreError:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vlalign", "encode", "--vision", VISION,
                            "--text", TEXT, "--data", spec, "--out", str(out), "--quiet"],
                           check=True, cwd=ROOT)
            print(f"encoded {spec} into {out} in {time.perf_counter() - start:.0f} s", flush=True)
        paths.append(out)
    return paths


def warm_up(stores: list[Path]) -> None:
    """Read the stores and import the libraries once, so that every timed run finds them in
    the page cache (the first run would otherwise pay for the disk alone)."""
    for store in stores:
        for path in store.rglob("*"):
            if path.is_file():
                path.read_bytes()
    subprocess.run([sys.executable, "-c", "import safetensors, torch, tqdm, vlalign.cli, "
                    "vlalign.sail.heads, vlalign.sail.losses, vlalign.store.stream"],
                   check=True, cwd=ROOT)


def timed(command: list[str]) -> float:
    """Seconds from spawn to exit of ``command``; a failure stops the bench with its stderr."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"exit {done.returncode}: {' '.join(command)}\n{tail}")
    return seconds


def engine_steps(run: Path) -> int | None:
    """The step the engine's exported heads are from (None if it records none)."""
    heads = run / "heads.json"
    return json.loads(heads.read_text()).get("step") if heads.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="engine/bare pairs (default 3)")
    parser.add_argument("--steps", type=int, default=110,
                        help="training steps per run (default 110: 5 epochs of the demo stores)")
    parser.add_argument("--stores", nargs="+", type=Path, help="training stores (default: the "
                        "demo's, encoded if missing)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sail-offline.yaml",
                        help="SAIL recipe (default configs/sail-offline.yaml)")
    parser.add_argument("--threads", type=int, help="torch threads for both (default: torch's)")
    args = parser.parse_args()

    stores = [s.resolve() for s in args.stores or encode_demo_stores(RESULTS / "stores")]
    args.config = args.config.resolve()  # the runs start in the repository root
    config = load_config(SailConfig, args.config)
    rows = sum(len(FeatureStore(s)) for s in stores)
    steps_per_epoch = rows // config.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"{rows} pairs are fewer than one batch of {config.batch_size}")
    precision = resolve_precision(config.precision, torch.device("cpu"))
    shared = [f"precision={precision}"] + ([f"num_threads={args.threads}"] if args.threads else [])
    store_args = [arg for s in stores for arg in ("--store", str(s))]
    epochs = (args.steps + 0.5) / steps_per_epoch  # int(epochs * steps_per_epoch) == steps

    def engine(out: Path) -> list[str]:
        sets = [*shared, "device=cpu", f"epochs={epochs!r}"]
        return [sys.executable, "-m", "vlalign", "train", "sail", *store_args, "--config",
                str(args.config), "--out", str(out), "--max-steps", str(args.steps), "--quiet",
                *[arg for s in sets for arg in ("--set", s)]]

    def bare(out: Path) -> list[str]:
        return [sys.executable, str(BENCH / "bare_sail_loop.py"), *store_args, "--config",
                str(args.config), "--steps", str(args.steps), "--out", str(out),
                *[arg for s in shared for arg in ("--set", s)]]

    warm_up(stores)
    runs = []
    for pair in range(1, args.pairs + 1):
        times = {}
        for name, command in (("engine", engine), ("bare", bare)):
            with tempfile.TemporaryDirectory(prefix=f"vlalign-overhead-{name}-") as tmp:
                run = Path(tmp) / "run"
                times[name] = timed(command(run))
                done = engine_steps(run) if name == "engine" else None
                if done not in (None, args.steps):
                    raise SystemExit(f"the engine ran {done} steps, not {args.steps}: the "
                                     "comparison would be unequal")
        runs.append({"pair": pair, "engine_s": times["engine"], "bare_s": times["bare"],
                     "ratio": times["engine"] / times["bare"]})
        print(json.dumps(runs[-1]), flush=True)
    median = statistics.median(r["ratio"] for r in runs)
    info = machine() | cpu_bf16_flags()
    print(f"\nmachine: {info}\n{rows} pairs, batch {config.batch_size}, {args.steps} steps, "
          f"precision {precision}")
    print_table(runs, ["pair", "engine_s", "bare_s", "ratio"])
    print(f"median engine / bare: {median:.3f}")
    placeholder = Path("TMP")
    path = write_results("train_overhead", {
        "machine": info, "bench_command": [sys.executable, *sys.argv],
        "engine_command": engine(placeholder), "bare_command": bare(placeholder),
        "stores": [str(s) for s in stores], "pairs_in_stores": rows,
        "batch_size": config.batch_size, "steps": args.steps, "precision": precision,
        "runs": runs, "median_ratio": median})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
