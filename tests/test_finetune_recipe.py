"""Full fine-tuning as EVA-02 fine-tunes: layer-wise lr decay (kept by the schedule), drop path,
label smoothing, another resolution; on a tiny two-block student saved as a UTA model."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vlalign.backbones.base import Preprocess, image_to_tensor
from vlalign.cli import main
from vlalign.data import create_source
from vlalign.eval.finetune import (
    Classifier,
    CrossEntropy,
    FinetuneConfig,
    finetune,
    layer_decay_scales,
    load_classifier,
)
from vlalign.train import loop
from vlalign.train.optim import cosine_lr, create_optimizer, set_lr_scale
from vlalign.uta.artifact import save_student
from vlalign.uta.student import create_student
from vlalign.utils.checkpoint import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
DEPTH, TRAIN, TEST = 2, "digits:train[:32]", "digits:test[:16]"


def _student():
    torch.manual_seed(0)
    return create_student("eva02_tiny_patch14_224", 16, img_size=32, patch_size=8, dim=32,
                          depth=DEPTH, heads=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny student written as a UTA model (a stand-in teacher gives the preprocessing)."""
    path = tmp_path_factory.mktemp("recipe") / "uta"
    teacher = SimpleNamespace(preprocess=Preprocess(32, (0.5,) * 3, (0.5,) * 3),
                              identity={"name": "stand-in"}, dim=16)
    save_student(path, _student(), teacher, "stand-in", {"step": 0})
    return path


def _config(**changes) -> FinetuneConfig:
    config = FinetuneConfig(mode="full", batch_size=8, epochs=1, augment=False,
                            precision="fp32", device="cpu", log_every=1, checkpoint_every=2,
                            head_init="zeros")  # the stand-in teacher has no text side
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def _eva02_layer(name: str) -> int:
    """EVA-02's ``get_num_layer_for_vit`` (optim_factory.py) on a classifier parameter name."""
    name = name.removeprefix("student.trunk.")
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return DEPTH + 1


def test_layer_decay_gives_eva02_scales() -> None:
    classifier = Classifier(_student(), 10)
    scales = layer_decay_scales(classifier, 0.7)
    assert set(scales) == {name for name, _ in classifier.named_parameters()}
    for name, scale in scales.items():
        assert scale == pytest.approx(0.7 ** (DEPTH + 1 - _eva02_layer(name))), name
    block0 = scales["student.trunk.blocks.0.attn.qkv.weight"]
    assert block0 / scales["fc.weight"] == pytest.approx(0.7 ** DEPTH)
    assert scales["student.trunk.norm.weight"] == scales["fc.bias"] == 1.0
    assert set(layer_decay_scales(classifier, 1.0).values()) == {1.0}


def test_a_parameter_moves_at_its_lr_scale() -> None:
    """Lion's update is lr x sign, so each parameter moves by exactly the scheduled lr times its
    scale: each group's lr is the schedule's times its scale (the engine rewrites it so every
    step)."""
    a, b = (torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(2))
    set_lr_scale(b, 0.25)
    optimizer = create_optimizer("lion", [("a", a), ("b", b)], 0.5, 0.0, (0.9, 0.99))
    assert [group["lr_scale"] for group in optimizer.param_groups] == [1.0, 1.0, 0.25]
    (a.sum() + b.sum()).backward()
    optimizer.step()
    assert torch.all(a == -0.5) and torch.all(b == -0.125)
    assert [group["lr"] for group in optimizer.param_groups] == [0.5, 0.5, 0.125]


def test_the_schedule_keeps_the_layer_ratios(model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the engine: at every step each parameter's lr is the schedule's times its scale,
    through warm-up and cosine."""
    seen: list[dict[str, float]] = []
    create = loop.create_optimizer

    def recording(name, named_params, *args, **kwargs):
        named = list(named_params)
        optimizer = create(name, named, *args, **kwargs)
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}

        def record(opt, *_):  # the lr each group steps with
            seen.append({n: group_of[id(p)]["lr"] for n, p in named if id(p) in group_of})

        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(loop, "create_optimizer", recording)
    config = _config(epochs=2, layer_decay=0.6)
    config.optim.warmup_fraction = 0.25
    finetune(model, TRAIN, TEST, config, out=tmp_path / "run", progress=False)
    assert len(seen) == 8  # 2 epochs of 32 digits at batch 8
    logged = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    prefix = "classifier.student.trunk."
    for step, lrs in enumerate(seen):
        head = lrs["classifier.fc.weight"]
        assert head == pytest.approx(cosine_lr(step, 8, config.optim.lr, 0.25)) == logged[step]
        assert lrs[f"{prefix}blocks.0.mlp.fc1.weight"] / head == pytest.approx(0.6 ** DEPTH)
        assert lrs[f"{prefix}patch_embed.proj.weight"] / head == pytest.approx(0.6 ** 3)
        assert lrs[f"{prefix}norm.weight"] == head
    assert seen[0]["classifier.fc.weight"] < seen[1]["classifier.fc.weight"]  # warm-up
    assert seen[2]["classifier.fc.weight"] > seen[7]["classifier.fc.weight"]  # cosine


def test_drop_path_is_active_in_training_and_off_in_eval() -> None:
    pixels = torch.randn(4, 3, 32, 32)
    plain = Classifier(_student(), 10)
    torch.nn.init.normal_(plain.fc.weight)
    dropped = Classifier(_student(), 10)
    dropped.load_state_dict(plain.state_dict())
    dropped.student.set_drop_path(0.5)
    assert dropped.student.config.drop_path == 0.5
    with torch.no_grad():
        dropped.train()
        torch.manual_seed(1)
        first = dropped(pixels)
        torch.manual_seed(2)
        assert not torch.equal(first, dropped(pixels))  # per-sample masks, redrawn
        torch.manual_seed(1)
        assert torch.equal(first, dropped(pixels))
        torch.testing.assert_close(dropped.eval()(pixels), plain.eval()(pixels), rtol=0, atol=0)
        plain.train()
        assert torch.equal(plain(pixels), plain(pixels))  # no drop path: deterministic
    loss = CrossEntropy(dropped, seed=3).train()
    batch = {"pixels": pixels, "label": torch.tensor([0, 1, 2, 3])}
    with torch.no_grad():  # a step's draws are a function of (seed, step, rank) alone
        at_5 = loss({**batch, "step": 5}).loss
        torch.manual_seed(123)
        assert torch.equal(loss({**batch, "step": 5}).loss, at_5)
        assert not torch.equal(loss({**batch, "step": 6}).loss, at_5)


def test_label_smoothing_is_cross_entropys() -> None:
    classifier = Classifier(_student(), 10).eval()
    torch.nn.init.normal_(classifier.fc.weight)
    batch = {"pixels": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 3, 3, 9])}
    with torch.no_grad():
        logits = classifier(batch["pixels"])
        for smoothing in (0.0, 0.1, 0.3):
            loss = CrossEntropy(classifier, label_smoothing=smoothing).eval()(batch).loss
            expected = F.cross_entropy(logits, batch["label"], label_smoothing=smoothing)
            torch.testing.assert_close(loss, expected)
        assert not torch.equal(CrossEntropy(classifier, label_smoothing=0.1)(batch).loss,
                               CrossEntropy(classifier)(batch).loss)


def test_img_size_finetuning_saves_and_evaluates_at_that_size(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ft48"
    common = ["finetune", "--model", str(model), "--data", TRAIN, "--test-data", TEST,
              "--quiet", "--device", "cpu", "--precision", "fp32", "--batch-size", "8"]
    assert main([*common, "--mode", "full", "--epochs", "1", "--no-augment", "--img-size", "48",
                 "--set", "layer_decay=0.8", "--set", "head_init=zeros", "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    record = json.loads((out / "finetune.json").read_text())
    assert record["img_size"] == 48 and record["settings"]["layer_decay"] == 0.8
    classifier, preprocess, saved = load_classifier(out)
    assert saved["student"]["img_size"] == preprocess.size == 48
    assert saved["student"]["drop_path"] == 0.1 and len(saved["classes"]) == 10
    assert classifier.student.trunk.pos_embed.shape == (1, 1 + 6 * 6, 32)
    source = create_source(TEST)
    items = [source.load(i) for i in range(len(source))]
    pixels = torch.stack([image_to_tensor(item.image, preprocess) for item in items])
    assert pixels.shape[-2:] == (48, 48)
    with torch.no_grad():  # the reported accuracy is the saved classifier's, at 48 px
        predicted = classifier(pixels).argmax(dim=1)
    labels = torch.tensor([item.label for item in items])
    assert metrics["acc1"] == pytest.approx((predicted == labels).float().mean().item())
    assert metrics["steps"] == 4
    assert main([*common, "--img-size", "44"]) == 2  # not a multiple of the 8-px patches
    assert re.search("img_size 44 is not a multiple", capsys.readouterr().err)
    linear = finetune(model, TRAIN, TEST, FinetuneConfig(img_size=48, device="cpu"),
                      progress=False)
    assert linear["img_size"] == 48 and 0 <= linear["metrics"]["lp_acc1"] <= 1


def test_resume_with_drop_path_is_exact(model: Path, tmp_path: Path) -> None:
    """Drop path's draws are seeded per step, so stopping and resuming changes nothing."""
    config = _config(drop_path=0.5)
    finetune(model, TRAIN, TEST, config, out=tmp_path / "whole", progress=False)
    finetune(model, TRAIN, TEST, config, out=tmp_path / "parts", progress=False, max_steps=2)
    finetune(model, TRAIN, TEST, config, out=tmp_path / "parts", progress=False, resume=True)
    whole, parts = (load_tensors(tmp_path / run / "classifier.safetensors")
                    for run in ("whole", "parts"))
    for name, tensor in whole.items():
        assert torch.equal(parts[name], tensor), name
    finetune(model, TRAIN, TEST, _config(drop_path=0.0), out=tmp_path / "off", progress=False)
    off = load_tensors(tmp_path / "off" / "classifier.safetensors")
    assert not torch.equal(off["fc.weight"], whole["fc.weight"])  # drop path did act
