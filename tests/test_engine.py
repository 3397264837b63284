"""The training engine: fp16 runs with loss scaling and learns at SAIL's batch, the learning
guard stops a run whose gradients are all zero (and only such a run), the scaler's state
resumes bit for bit, TensorBoard gets the logged values, and bad recipe values are one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils._python_dispatch import TorchDispatchMode

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.sail import train as sail_train
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.store import EncodeOptions, encode_store
from vlalign.store.stream import Batch
from vlalign.train import loop
from vlalign.train.config import OptimConfig
from vlalign.train.guards import TrainingStalled
from vlalign.train.loop import fit
from vlalign.train.precision import Precision
from vlalign.train.run import RunDir
from vlalign.train.task import StepOutput, Task

VISION, TEXT = "bundled:pixels?size=8", "bundled:bow?dim=64"
PAPER_BATCH = 32768


class RandomFeatures(Task):
    """SAIL's module on fixed random features: the paper's batch without a 32k-row store."""

    name, unit = "random features", "pairs"

    def __init__(self, config: SailConfig, image_dim: int = 32, text_dim: int = 16) -> None:
        torch.manual_seed(0)
        self.device, self.config = torch.device("cpu"), config
        self.module = sail_train.SailModule(config, image_dim, text_dim)
        gen = torch.Generator().manual_seed(1)
        self.batch = Batch(0, torch.randn(config.batch_size, image_dim, generator=gen),
                           [torch.randn(config.batch_size, text_dim, generator=gen)])
        self.steps_per_epoch, self.samples_per_step = 1, config.batch_size

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        for _ in range(start, stop):
            yield self.batch

    def watched_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.module.vision_head.parameters(), *self.module.text_head.parameters()]

    def export(self, run_dir: Path, step: int, info: dict[str, Any]) -> None:
        torch.save(self.module.state_dict(), run_dir / "final.pt")


def _paper_config(precision: str, steps: int = 2) -> SailConfig:
    """The paper's batch and loss (GLU heads, sigmoid over |B|^2 pairs), tiny dims."""
    return SailConfig(vision_head=HeadConfig("glu", 2), text_head=HeadConfig("glu", 2),
                      embed_dim=16, positives=["raw"], loss_block_size=8192,
                      batch_size=PAPER_BATCH, epochs=steps, precision=precision,
                      optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.0, grad_clip=0.0,
                                        warmup_fraction=0.0), log_every=1, device="cpu")


def _train(task: Task, config: SailConfig, run: Path) -> dict[str, torch.Tensor]:
    fit(task, config, RunDir(run, resume=False), {}, progress=False)
    return {k: v.detach().clone() for k, v in task.module.state_dict().items()}


@pytest.mark.slow
def test_fp16_at_the_paper_batch_trains_the_heads_and_matches_bf16(tmp_path: Path) -> None:
    """Two steps at B = 32,768 (the |B|^2-normalised loss): fp16 with the engine's loss scaling
    moves every head weight, in the direction bf16 moves it."""
    initial = RandomFeatures(_paper_config("fp32")).module.vision_head.w_out.weight.clone()
    moved = {}
    for precision in ("fp16", "bf16"):
        state = _train(RandomFeatures(_paper_config(precision)), _paper_config(precision),
                       tmp_path / precision)
        moved[precision] = state["vision_head.w_out.weight"] - initial
    assert moved["fp16"].ne(0).float().mean() > 0.99  # fp16 trained the heads
    # AdamW's first steps are about lr * sign(grad): the two precisions agree on the direction
    cosine = F.cosine_similarity(moved["fp16"].flatten(), moved["bf16"].flatten(), dim=0)
    assert cosine > 0.95
    assert (moved["fp16"] - moved["bf16"]).norm() < 0.3 * moved["bf16"].norm()


def _small_config(**changes: Any) -> SailConfig:
    config = SailConfig(vision_head=HeadConfig("glu", 2), text_head=HeadConfig("glu", 2),
                        embed_dim=16, positives=["raw"], loss_block_size=64, batch_size=64,
                        epochs=8, precision="fp32", optim=OptimConfig(lr=1e-3), log_every=1,
                        checkpoint_every=3, device="cpu")
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_learning_guard_stops_a_run_whose_heads_get_no_gradient(tmp_path: Path, monkeypatch):
    task = RandomFeatures(_small_config())
    vision = task.module.encode_image_features
    monkeypatch.setattr(task.module, "encode_image_features", lambda x: vision(x).detach())
    monkeypatch.setattr(task.module, "encode_text_features",
                        lambda x: F.normalize(x[:, :16], dim=-1))  # bypasses the text head
    with pytest.raises(TrainingStalled) as caught:
        fit(task, _small_config(), RunDir(tmp_path / "run", resume=False), {}, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "exactly-zero gradient for 3 steps (up to step 3)" in message
    assert "under precision fp32" in message and "does not depend on" in message


def test_learning_guard_catches_fp16_gradients_that_underflow(tmp_path: Path, monkeypatch):
    """The historic defect: fp16 autocast without loss scaling and gradients below fp16's
    smallest subnormal (here a loss 1e-12 times smaller). Every gradient is finite, the loss
    looks healthy, and only the guard notices."""
    monkeypatch.setattr(Precision, "__init__", _without_scaler(Precision.__init__))
    task = RandomFeatures(_small_config(precision="fp16"))
    forward = task.module.forward
    monkeypatch.setattr(task.module, "forward",
                        lambda batch: StepOutput(forward(batch).loss * 1e-12))
    with pytest.raises(TrainingStalled, match=r"under precision fp16: fp16 gradients underflow"):
        fit(task, _small_config(precision="fp16"), RunDir(tmp_path / "run", resume=False), {},
            progress=False)


def _without_scaler(init):  # noqa: ANN001, ANN202 - wraps Precision.__init__
    def build(self, requested: str, device: torch.device) -> None:
        init(self, requested, device)
        self.scaler = None
    return build


def test_learning_guard_is_quiet_on_a_healthy_run_and_can_be_disabled(tmp_path: Path,
                                                                      monkeypatch):
    metrics = fit(RandomFeatures(_small_config()), _small_config(),
                  RunDir(tmp_path / "healthy", resume=False), {}, progress=False)
    assert metrics["step"] == 8 and metrics["loss"] < 1.0
    task = RandomFeatures(_small_config())
    monkeypatch.setattr(task.module, "encode_image_features",
                        lambda x: F.normalize(x[:, :16], dim=-1))
    monkeypatch.setattr(task.module, "encode_text_features",
                        lambda x: F.normalize(x[:, :16], dim=-1))
    off = _small_config(learning_guard_steps=0)
    assert fit(task, off, RunDir(tmp_path / "off", resume=False), {}, progress=False)["step"] == 8


def test_fp16_resume_restores_the_loss_scaler_bit_for_bit(tmp_path: Path) -> None:
    config = _small_config(precision="fp16")
    whole = _train(RandomFeatures(config), config, tmp_path / "whole")
    first = RandomFeatures(config)
    fit(first, config, RunDir(tmp_path / "parts", resume=False), {}, progress=False, max_steps=4)
    saved = json.loads((tmp_path / "parts" / "ckpt-00000004.json").read_text())
    assert saved["scaler"]["scale"] == 65536.0 and saved["scaler"]["_growth_tracker"] == 4
    second = RandomFeatures(config)
    fit(second, config, RunDir(tmp_path / "parts", resume=True), {}, progress=False)
    for key, value in whole.items():
        assert second.module.state_dict()[key].equal(value), key
    lines = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().split("\n")
             if x]
    assert [line["step"] for line in lines] == list(range(1, 9))
    assert {line["loss_scale"] for line in lines} == {65536.0}


@pytest.mark.slow
def test_a_compiled_module_trains_like_the_eager_one(tmp_path: Path) -> None:
    """``compile: true`` (torch.compile, inductor on the CPU) gives the eager run's losses."""
    losses = {}
    for compiled in (False, True):
        config = _small_config(compile=compiled, epochs=2)
        fit(RandomFeatures(config), config, RunDir(tmp_path / str(compiled), resume=False), {},
            progress=False)
        lines = (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()
        losses[compiled] = [json.loads(line)["loss"] for line in lines]
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.fixture(scope="module")
def digit_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engine") / "digits"
    encode_store(create_source("digits:train[:256]"), create_vision_encoder(VISION),
                 create_text_encoder(TEXT), out, kinds=["raw", "rewritten"], specs=(VISION, TEXT),
                 options=EncodeOptions(shard_size=128, num_workers=0, progress=False))
    return out


def test_tensorboard_reads_back_the_logged_values(digit_store: Path, tmp_path: Path) -> None:
    config = _small_config(train_stores=[str(digit_store)], positives=["raw", "rewritten"],
                           report_to=["tensorboard"], log_every=2, epochs=2)
    sail_train.train_sail(config, tmp_path / "run", progress=False)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
              if x]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    for key in ("loss", "loss/raw", "lr", "grad_norm"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [line["step"] for line in logged] == [2, 4, 6, 8]
        assert [s.value for s in scalars] == pytest.approx([line[key] for line in logged])


@pytest.mark.parametrize(("change", "message"), [
    ({"loss": "hinge"}, "config loss: 'hinge' is not one of sigmoid, siglip, infonce"),
    ({"precision": "fp8"}, "config precision: 'fp8' is not one of auto, bf16, fp16, fp32"),
    ({"optim": OptimConfig(name="sgd")}, "config optim.name: 'sgd' is not one of lion, adamw"),
    ({"report_to": ["mlflow"]}, "config report_to: 'mlflow' is not one of tensorboard, wandb"),
    ({"batch_size": 0}, "config batch_size: must be at least 1, got 0"),
    ({"vision_head": HeadConfig("star")}, "config vision_head.kind: 'star' is not one of"),
])
def test_bad_recipe_values_are_one_line_errors(digit_store: Path, tmp_path: Path,
                                               change: dict, message: str) -> None:
    config = _small_config(train_stores=[str(digit_store)], **change)
    with pytest.raises(UserError, match=message) as caught:
        sail_train.train_sail(config, tmp_path / "run", progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_precision_rules_scale_fp16_and_allow_tf32_for_fp32_on_cuda() -> None:
    """fp16 always gets a loss scaler (CPU too), bf16 and fp32 never; fp32 on CUDA allows TF32
    matmuls (the flags are set without touching a GPU, so this runs on the CPU)."""
    cpu = torch.device("cpu")
    assert Precision("fp16", cpu).scaler is not None
    assert Precision("bf16", cpu).scaler is None and Precision("fp32", cpu).scaler is None
    assert Precision("fp32", cpu).dtype is None and Precision("bf16", cpu).dtype == torch.bfloat16
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        Precision("fp32", cpu)
        assert not torch.backends.cuda.matmul.allow_tf32
        Precision("fp32", torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _HostSyncs(TorchDispatchMode):
    """Counts the ops that make the host wait for the device (item, bool, float of a tensor)."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.SYNCING
        return func(*args, **(kwargs or {}))


class _CountingBatches(RandomFeatures):
    """Random features whose batch iterator records the host syncs of each step."""

    def __init__(self, config: SailConfig, syncs: _HostSyncs) -> None:
        super().__init__(config)
        self.syncs, self.per_step = syncs, []

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        for _ in range(start, stop):
            before = self.syncs.count
            yield self.batch
            self.per_step.append(self.syncs.count - before)  # the step that used this batch


def test_no_host_sync_outside_logging_checkpoint_and_first_steps(tmp_path: Path) -> None:
    """bf16/fp32 steps never wait for the device between logging steps (a GPU stays fed): the
    non-finite watch lives on the device and is read only when something is logged or saved."""
    config = SailConfig(vision_head=HeadConfig("linear"), text_head=HeadConfig("linear"),
                        embed_dim=8, positives=["raw"], batch_size=16, epochs=40,
                        precision="fp32", log_every=10, checkpoint_every=1000, device="cpu",
                        optim=OptimConfig(lr=1e-3))
    syncs = _HostSyncs()
    task = _CountingBatches(config, syncs)
    with syncs:
        fit(task, config, RunDir(tmp_path / "run", resume=False), {}, progress=False)
    first = loop.GUARD_EVERY_STEP_UNTIL
    # the last step (39) ends the loop before its batch's count is recorded: steps 20..38
    quiet = [n for step, n in enumerate(task.per_step[first:], start=first)
             if (step + 1) % config.log_every]
    assert len(quiet) == 18 and set(quiet) == {0}, task.per_step
    assert task.per_step[29] > 0  # a logging step reads the watch (and logs)


def test_auto_precision_reads_the_cpu_flags(tmp_path: Path, monkeypatch) -> None:
    """bf16 on the CPU exactly when its flags list bf16 matrix instructions (a timing alone
    once picked fp32 on an AVX-512 BF16 host); the timing only where no flags are listed."""
    from vlalign.train import precision

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert precision.cpu_flags(str(info)) >= {"avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None
    for flags, fast in (({"avx2", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                        ({"avx2", "fma"}, False)):
        precision.cpu_bf16_is_fast.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert precision.cpu_bf16_is_fast() is fast
        assert precision.resolve_precision("auto", torch.device("cpu")) == (
            "bf16" if fast else "fp32")
    precision.cpu_bf16_is_fast.cache_clear()
