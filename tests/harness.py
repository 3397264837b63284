"""Harness for the fault and multi-process tests: children forked from a warm forkserver.

Importing torch and vlalign takes seconds on 2 cores; the forkserver pays that once and each
child is a fork (tens of ms). A child runs one job (``encode``, ``train``, ``uta`` or
``finetune``) on the tiny bundled encoders, optionally as rank r of a gloo group, optionally
with a kill switch: the child counts *events* (every atomic file write, twice: once written but
not yet renamed, once renamed; every unlink; every training step and encode batch) and SIGKILLs
itself at a chosen one. At a ``-mid`` event the temporary file is first truncated to a chosen
fraction, as a kill in the middle of the write would leave it. Between two events a process
changes nothing on disk, so killing at events reaches every state a kill at any moment can
leave. A run records its event labels.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import forkserver
from pathlib import Path
from typing import IO, Any

import torch
import torch._dynamo  # noqa: F401  (optimisers import it on their first step: preload it)
from safetensors.torch import load_file

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.config import from_dict
from vlalign.data import create_source
from vlalign.eval import finetune as finetune_module
from vlalign.sail import train as train_module
from vlalign.sail.config import SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, encode_store
from vlalign.uta import train as uta_module
from vlalign.uta.config import UtaConfig
from vlalign.utils import files

VISION, TEXT = "bundled:pixels?size=8&patch=4", "bundled:bow?dim=64"
ENCODE = {"shard_size": 32, "batch_size": 16, "num_workers": 0, "progress": False}
TRAIN = {"vision_head": {"kind": "glu", "width_factor": 2},
         "text_head": {"kind": "glu", "width_factor": 2}, "embed_dim": 16, "batch_size": 40,
         "epochs": 3, "optim": {"lr": 1e-3}, "loss_block_size": 16, "checkpoint_every": 4,
         "log_every": 2, "precision": "fp32", "num_threads": 1, "device": "cpu"}
UTA = {"student": {"dim": 32, "depth": 1, "heads": 2}, "data": ["digits:train[:64]"],
       "batch_size": 8, "epochs": 2, "optim": {"name": "adamw", "lr": 3e-3},
       "checkpoint_every": 3, "log_every": 1, "precision": "fp32", "num_threads": 1,
       "device": "cpu"}
FINETUNE = {"mode": "full", "batch_size": 8, "epochs": 2, "checkpoint_every": 3, "log_every": 1,
            "precision": "fp32", "device": "cpu"}
create_source("digits:train")  # loads scikit-learn's digits once, in the forkserver


def context() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, with this module (and so torch and vlalign) preloaded.

    The forkserver imports its preload list before it applies the parent's sys.path, so this
    folder goes on its PYTHONPATH while it starts.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved]))
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return ctx


class KillSwitch:
    """Counts events and SIGKILLs this process at event ``at`` (1-based; None: never)."""

    def __init__(self, at: int | None, cut: float, log: Path | None):
        self.at, self.cut, self.log, self.count = at, cut, log, 0
        self.labels: list[str] = []

    def event(self, label: str, tmp: Path | None = None) -> None:
        self.count += 1
        self.labels.append(label)
        if self.count != self.at:
            return
        if tmp is not None and tmp.exists():
            os.truncate(tmp, int(tmp.stat().st_size * self.cut))
        os.kill(os.getpid(), signal.SIGKILL)

    def save(self) -> None:
        if self.log is not None:
            self.log.write_text(json.dumps(self.labels))

    def install(self) -> None:
        """Wrap the library's write, unlink, step and batch functions to report events."""
        original_path, original_unlink = files.atomic_path, Path.unlink
        forward = train_module.SailModule.forward
        distil = uta_module.Distiller.forward
        cross_entropy = finetune_module.CrossEntropy.forward

        @contextmanager
        def atomic_path(path: Path):
            with original_path(path) as tmp:
                yield tmp
                self.event(f"{path.name}-mid", tmp)
            self.event(f"{path.name}-done")

        def unlink(path: Path, missing_ok: bool = False) -> None:
            self.event(f"unlink-{path.name}")
            original_unlink(path, missing_ok=missing_ok)

        def step(module: Any, batch: Any):
            self.event("step")
            return forward(module, batch)

        def uta_step(module: Any, *args: Any):
            self.event("step")
            return distil(module, *args)

        def finetune_step(module: Any, *args: Any):
            self.event("step")
            return cross_entropy(module, *args)

        files.atomic_path = atomic_path
        Path.unlink = unlink
        train_module.SailModule.forward = step
        uta_module.Distiller.forward = uta_step
        finetune_module.CrossEntropy.forward = finetune_step


def encode(out: Path, data: str, switch: KillSwitch | None = None, vision_spec: str = VISION,
           **options: Any) -> None:
    """Encode ``data`` into ``out`` with the tiny encoders (resuming a partial store)."""
    vision = create_vision_encoder(vision_spec)
    if switch is not None:
        vision_encode = vision.encode

        def counted(pixels: torch.Tensor, tokens: bool = False):
            switch.event("batch")
            return vision_encode(pixels, tokens=tokens)

        vision.encode = counted
    encode_store(create_source(data), vision, create_text_encoder(TEXT), out,
                 kinds=["raw", "rewritten"], specs=(vision_spec, TEXT),
                 options=EncodeOptions(**(ENCODE | options)))


def train_config(store: Path, **changes: Any) -> SailConfig:
    """The tiny test recipe on ``store`` (``changes`` override top-level keys)."""
    return from_dict(SailConfig, {**TRAIN, "train_stores": [str(store)], **changes})


def full_disk_open(name: str) -> Callable[..., IO[Any]]:
    """An ``open`` that sends writes of the file ``name`` to /dev/full (the kernel answers
    ENOSPC); installed as ``vlalign.utils.files.open`` it shadows the builtin there only."""
    def redirected(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        target = "/dev/full" if Path(path).name == name and "w" in mode else path
        return open(target, mode, *args, **kwargs)  # noqa: SIM115

    return redirected


def job(kind: str, args: dict[str, Any], kill_at: int | None = None, cut: float = 0.5,
        log: str | None = None, env: dict[str, str] | None = None) -> None:
    """Child entry point: run one job, maybe killed at an event; the events go to ``log``.

    ``args["disk_full"]`` names a file whose write fails with ENOSPC.
    """
    torch.set_num_threads(1)
    os.environ.update(env or {})
    switch = KillSwitch(kill_at, cut, Path(log) if log else None)
    switch.install()
    if args.get("disk_full"):
        files.open = full_disk_open(args.pop("disk_full"))
    if kind == "encode":
        encode(Path(args.pop("out")), args.pop("data"), switch, **args)
    elif kind == "uta":
        config = from_dict(UtaConfig, {**UTA, "teacher": f"sail:{args.pop('teacher')}"})
        uta_module.train_uta(config, Path(args.pop("run")), progress=False, **args)
    elif kind == "finetune":
        config = from_dict(finetune_module.FinetuneConfig, FINETUNE)
        finetune_module.finetune(args.pop("model"), "digits:train[:64]", "digits:test[:32]",
                                 config, Path(args.pop("run")), progress=False, **args)
    else:
        config = train_config(Path(args.pop("store")), **args.pop("config", {}))
        train_sail(config, Path(args.pop("run")), progress=False, **args)
    switch.save()


def run(kind: str, args: dict[str, Any], kill_at: int | None = None, cut: float = 0.5,
        log: Path | None = None, timeout: float = 120) -> int:
    """Run ``job`` in a forked child and return its exit code (-9 when the switch fired)."""
    process = context().Process(target=job, args=(kind, args, kill_at, cut,
                                                   str(log) if log else None))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"{kind} child still running after {timeout} s")
    return process.exitcode


def run_ranks(kind: str, args: list[dict[str, Any]], port: int, timeout: float = 120) -> list[int]:
    """Run ``job`` as ranks 0..n-1 of one gloo group (torchrun's variables); their exit codes."""
    world = len(args)
    processes = []
    for rank, rank_args in enumerate(args):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(context().Process(target=job, args=(kind, rank_args),
                                           kwargs={"env": env}))
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in processes]


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, the manifest without its run statistics."""
    found = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file()}
    manifest = json.loads(found.pop("manifest.json"))
    manifest.pop("last_run")
    found["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return found


def same_store(a: Path, b: Path) -> None:
    """AssertionError naming the first file that differs (arrays compared byte for byte)."""
    left, right = store_files(a), store_files(b)
    assert sorted(left) == sorted(right), sorted(set(left) ^ set(right))
    for name in left:
        assert left[name] == right[name], f"{name} differs"


def killed_and_resumed(kind: str, args: dict[str, Any], events: list[str], points: int,
                       seed: int, root: Path) -> Iterator[tuple[Path, str]]:
    """At ``points`` seeded random events of a clean run's ``events``: a fresh run in
    ``root/killed-N`` is killed there, then resumed to the end; yields (run folder, event)."""
    rng = random.Random(seed)
    for point in sorted(rng.sample(range(1, len(events) + 1), points)):
        run_dir, where = root / f"killed-{point}", events[point - 1]
        point_args = {**args, "run": str(run_dir)}
        code = run(kind, point_args, kill_at=point, cut=rng.random())
        assert code == -signal.SIGKILL, f"the kill at event {point} ({where}) must land"
        assert run(kind, point_args | {"resume": True}) == 0, where
        yield run_dir, where


def same_tensors(found: Path, expected: Path, where: str) -> None:
    """AssertionError naming the first tensor of two safetensors files that differs."""
    left, right = load_file(found), load_file(expected)
    assert left.keys() == right.keys(), where
    for key in right:
        assert left[key].equal(right[key]), f"{key} differs after a kill at {where}"
