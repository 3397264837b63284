"""UTA trainer: learns, resumes bit for bit, stored targets equal online ones, NaN guard,
baselines, time budget, and batches/masks as pure functions of (seed, step)."""

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import TEXT, VISION, save_sail_teacher
from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import StoreError, UserError
from vlalign.models import UTAModel, load_model
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.train.guards import TrainingDiverged
from vlalign.train.schedule import UNBOUNDED_STEPS, Schedule
from vlalign.uta import train as train_module
from vlalign.uta.config import StudentSpec, UtaConfig, check_config
from vlalign.uta.data import ImageRows, MaskingCollate, StepBatches
from vlalign.uta.targets import StoredTargets, cache_targets, pack_targets, unpack_targets
from vlalign.uta.teachers import create_teacher
from vlalign.uta.train import step_keep, train_uta
from vlalign.utils.checkpoint import load_checkpoint, load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = "digits:train[:64]"


def tiny_config(teacher: Path, **changes) -> UtaConfig:
    """One-block 32-d student, 8 steps per epoch of 64 digits, fp32 on the CPU."""
    config = UtaConfig(teacher=f"sail:{teacher}", student=StudentSpec(dim=32, depth=1, heads=2),
                       data=[DATA], batch_size=8, epochs=1, precision="fp32", log_every=1,
                       checkpoint_every=3, device="cpu")
    config.optim.lr = 3e-3
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sail_teacher(tmp_path_factory.mktemp("uta_train") / "sail")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_reduces_the_loss_and_writes_a_model(teacher_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_uta(tiny_config(teacher_dir, epochs=2), run, progress=False)
    lines = _metrics(run)
    assert [line["step"] for line in lines] == list(range(1, 17))
    assert lines[-1]["loss"] < 0.7 * lines[0]["loss"]
    assert {line["tokens_run"] for line in lines} == {3}  # 2 of 4 patches + CLS
    saved = json.loads((run / "uta.json").read_text())
    assert saved["student"]["patch_size"] == 32  # 64 px / the teacher's 2 x 2 grid
    assert saved["teacher"]["spec"] == f"sail:{teacher_dir}" and saved["step"] == 16
    assert isinstance(load_model(run), UTAModel)
    with pytest.raises(UserError, match="pass --resume"):
        train_uta(tiny_config(teacher_dir), run, progress=False)


def test_resume_equals_an_uninterrupted_run(teacher_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(teacher_dir, augment=True)
    config.mask.strategy = "block"
    train_uta(config, tmp_path / "whole", progress=False)
    train_uta(config, tmp_path / "split", progress=False, max_steps=4)
    assert load_checkpoint(tmp_path / "split")[1]["step"] == 4
    train_uta(config, tmp_path / "split", resume=True, progress=False)
    whole = load_tensors(tmp_path / "whole" / "student.safetensors")
    split = load_tensors(tmp_path / "split" / "student.safetensors")
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    ignore = ("img_per_s", "data_s", "teacher_s", "compute_s", "train_s")

    def losses(run: str) -> list[dict]:
        return [{k: v for k, v in line.items() if k not in ignore}
                for line in _metrics(tmp_path / run)]

    assert losses("split") == losses("whole")  # no duplicated or missing step


def _token_store(path: Path, spec: str) -> Path:
    encode_store(create_source(spec), create_vision_encoder(VISION), create_text_encoder(TEXT),
                 path, kinds=["raw"], specs=(VISION, TEXT),
                 options=EncodeOptions(tokens=True, dtype="float32", shard_size=16,
                                       num_workers=0, progress=False))
    return path


def test_store_targets_equal_online_targets(teacher_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    spec = "digits:train[:32]"
    store = _token_store(tmp_path / "store", spec)
    teacher = create_teacher(f"sail:{teacher_dir}")
    rows = ImageRows([create_source(spec)], teacher.preprocess)
    pixels = torch.stack([rows[(0, i)]["pixels"] for i in range(4)])
    reader = FeatureStore(store)
    stored = StoredTargets(teacher, (2, 2))(
        torch.from_numpy(reader.images(range(4))), torch.from_numpy(reader.tokens(range(4))))
    online = teacher.encode_image_tokens(pixels)
    torch.testing.assert_close(stored.tokens, online.tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stored.pooled, online.pooled, rtol=1e-4, atol=1e-5)

    first = {}
    for targets in ("online", "store"):
        config = tiny_config(teacher_dir, data=[spec], targets=targets, stores=[str(store)])
        first[targets] = train_uta(config, tmp_path / targets, progress=False, max_steps=1)
    # cached targets are float16 unit vectors: the cosine losses agree to float16 precision
    assert first["store"]["loss"] == pytest.approx(first["online"]["loss"], rel=1e-3)
    assert len(list((tmp_path / "cache" / "uta-targets").glob("*.npy"))) == 1
    wrong = tiny_config(teacher_dir, data=["digits:train[:16]"], targets="store",
                        stores=[str(store)])
    with pytest.raises(StoreError, match="was encoded from"):
        train_uta(wrong, tmp_path / "wrong", progress=False)


def test_cached_targets_are_unit_rows_computed_once(teacher_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeatureStore(_token_store(tmp_path / "store", "digits:train[:40]"))
    teacher = create_teacher(f"sail:{teacher_dir}")
    stored = StoredTargets(teacher, (2, 2))
    monkeypatch.setattr("vlalign.uta.targets.CACHE_BATCH", 16)  # 3 batches, the last short
    path = cache_targets(stored, store, progress=False, root=tmp_path / "cache")
    cached = np.load(path, mmap_mode="r")
    assert cached.shape == (40, 5, teacher.dim) and cached.dtype == np.float16
    direct = stored(torch.from_numpy(store.images(np.arange(40))),
                    torch.from_numpy(store.tokens(np.arange(40))))
    back = unpack_targets(torch.from_numpy(np.array(cached)), (2, 2))
    cos = torch.nn.functional.cosine_similarity
    assert cos(back.tokens, direct.tokens, dim=-1).min() > 0.9999
    assert cos(back.pooled, direct.pooled, dim=-1).min() > 0.9999
    assert torch.allclose(back.tokens.norm(dim=-1), torch.ones(40, 4), atol=1e-3)
    np.testing.assert_array_equal(pack_targets(direct), cached)

    def must_not_run(*args):
        raise AssertionError("targets recomputed")

    monkeypatch.setattr(StoredTargets, "__call__", must_not_run)
    assert cache_targets(stored, store, progress=False, root=tmp_path / "cache") == path
    assert list((tmp_path / "cache").iterdir()) == [path]  # no temporary file left


def test_bf16_targets_are_cached_apart_and_close_to_fp32(teacher_dir: Path,
                                                         tmp_path: Path) -> None:
    """The bf16 cache (what a bf16 run makes: 3x faster on a bf16 CPU) has its own key and its
    unit vectors keep a cosine above 0.999 with fp32's."""
    store = FeatureStore(_token_store(tmp_path / "store", "digits:train[:40]"))
    stored = StoredTargets(create_teacher(f"sail:{teacher_dir}"), (2, 2))
    fp32 = cache_targets(stored, store, progress=False, root=tmp_path / "cache")
    bf16 = cache_targets(stored, store, progress=False, root=tmp_path / "cache", precision="bf16")
    assert fp32 != bf16
    a, b = (torch.from_numpy(np.load(p)).float() for p in (fp32, bf16))
    assert not torch.equal(a, b)
    assert (a * b).sum(-1).min() > 0.999


def test_nan_guard_keeps_the_last_good_checkpoint(teacher_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = train_module.uta_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        return terms._replace(total=terms.total * float("nan")) if len(calls) == 6 else terms

    monkeypatch.setattr(train_module, "uta_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train_uta(tiny_config(teacher_dir, checkpoint_every=2), run, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "non-finite loss = nan at step 5" in message
    assert "last good checkpoint: step 4" in message
    tensors, info = load_checkpoint(run)  # intact (checksum verified), and the newest
    assert info["step"] == 4 and not (run / "student.safetensors").exists()
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("student."))


@pytest.mark.parametrize("objective", ["mim", "distill"])
def test_baselines_run(objective: str, teacher_dir: Path, tmp_path: Path) -> None:
    metrics = train_uta(tiny_config(teacher_dir, objective=objective), tmp_path / objective,
                        progress=False, max_steps=2)
    assert metrics["step"] == 2 and metrics["tokens_run"] == 5  # every patch + CLS
    saved = json.loads((tmp_path / objective / "uta.json").read_text())
    assert saved["student"]["mask_token"] == (objective == "mim")
    assert saved["objective"] == objective


def test_time_budget_stops_the_run(teacher_dir: Path, tmp_path: Path) -> None:
    metrics = train_uta(tiny_config(teacher_dir, time_budget_s=1e-3), tmp_path / "run",
                        progress=False)
    assert metrics["step"] == 1 and metrics["train_s"] >= 1e-3
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 1
    assert (tmp_path / "run" / "student.safetensors").exists()


def test_a_time_budget_replaces_epochs(teacher_dir: Path, tmp_path: Path) -> None:
    """A fast run keeps going past its epochs until the budget is spent (the schedule runs in
    time, so stopping at the epochs would end it mid-schedule)."""
    config = tiny_config(teacher_dir, epochs=0.25, time_budget_s=2.0, log_every=100)
    metrics = train_uta(config, tmp_path / "run", progress=False)
    assert metrics["epoch"] > 0.25 and metrics["train_s"] >= 2.0
    assert metrics["lr"] < 0.02 * config.optim.lr  # the cosine schedule reached its end
    assert Schedule(10, 1.0).stop == 10 and Schedule(10, 1.0, max_steps=4).stop == 4
    assert Schedule(10, 1.0, 5.0).stop == UNBOUNDED_STEPS
    assert Schedule(10, 1.0, 5.0, max_steps=4).stop == 4


def test_bad_config_values_are_one_line_errors(teacher_dir: Path, tmp_path: Path) -> None:
    for change, match in (({"objective": "mae"}, "objective"), ({"targets": "disk"}, "targets"),
                          ({"batch_size": 0}, "batch_size"),
                          ({"targets": "store"}, "one store per data spec")):
        with pytest.raises(UserError, match=match):
            check_config(tiny_config(teacher_dir, **change))
    bad_patch = tiny_config(teacher_dir, student=StudentSpec(dim=32, depth=1, heads=2,
                                                             patch_size=24))
    with pytest.raises(UserError, match="config student: img_size 64"):
        train_uta(bad_patch, tmp_path / "run", progress=False)


def test_batches_and_masks_are_pure_functions_of_seed_and_step(teacher_dir: Path) -> None:
    config = tiny_config(teacher_dir)
    one = StepBatches(64, 8, seed=3)
    two = [StepBatches(64, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 7, 8, 20):  # within and across epochs
        rows = one.rows_of(step)
        assert rows.tolist() == sorted(set(rows.tolist()), key=rows.tolist().index)
        assert rows.tolist() == two[0].rows_of(step).tolist() + two[1].rows_of(step).tolist()
        keep = step_keep(config, (4, 4), step, list(range(8)))
        assert torch.equal(keep, step_keep(config, (4, 4), step, list(range(8))))
        halves = [step_keep(config, (4, 4), step, list(range(4 * r, 4 * r + 4))) for r in (0, 1)]
        assert torch.equal(keep, torch.cat(halves))  # each rank draws only its rows
        # the loader's collate draws them per good item, at that item's global position
        items = [{"pixels": torch.zeros(3, 2, 2), "label": 0, "step": step}] * 4
        items[1] = {"bad": "unreadable", "step": step}
        batch = MaskingCollate(partial(step_keep, config, (4, 4)), first_position=4)(items)
        assert batch["bad"] == 1 and torch.equal(batch["keep"], keep[[4, 6, 7]])
    assert one.rows_of(0).tolist() != one.rows_of(8).tolist()  # a new epoch reshuffles
    assert not torch.equal(step_keep(config, (4, 4), 0, list(range(8))),
                           step_keep(config, (4, 4), 1, list(range(8))))


def test_a_missing_tracker_package_fails_before_the_teacher_loads(
        teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed

    def must_not_load(*args, **kwargs):
        raise AssertionError("the teacher loaded before the recipe was checked")

    monkeypatch.setattr(train_module, "create_teacher", must_not_load)
    with pytest.raises(UserError, match=r"--report-to wandb needs the wandb package: pip "
                                        r"install 'vlalign\[tracking\]'"):
        train_uta(tiny_config(teacher_dir, report_to=["wandb"]), tmp_path / "run",
                  progress=False)
    assert not (tmp_path / "run").exists()


def test_shipped_uta_configs_load_and_the_paper_recipe_is_eva02_b() -> None:
    """configs/uta-*.yaml are valid; the paper recipe carries EVA-02-B pre-training's values
    (see the YAML's notes) and a teacher in the released checkpoints' 1024-d space."""
    from vlalign.config import load_config

    check_config(load_config(UtaConfig, "configs/uta-offline.yaml"))
    paper = load_config(UtaConfig, "configs/uta-paper.yaml")
    check_config(paper)
    assert paper.teacher == "open_clip:EVA01-g-14/laion400m_s11b_b41k"
    assert (paper.student.name, paper.student.img_size, paper.student.patch_size) == (
        "eva02_base_patch14_224", 224, 16)
    optim = paper.optim
    assert (optim.lr, optim.beta2, optim.eps, optim.weight_decay, optim.grad_clip) == (
        1.5e-3, 0.98, 1e-6, 0.05, 3.0)
    assert (paper.batch_size, paper.epochs, paper.crop_scale) == (2048, 150, [0.2, 1.0])
    bad = load_config(UtaConfig, "configs/uta-offline.yaml", ["crop_scale=[0.0, 1.0]"])
    with pytest.raises(UserError, match="config crop_scale"):
        check_config(bad)
