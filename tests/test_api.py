"""The open_clip-style API: ``vlalign.load_model`` / ``create_model_and_transforms`` /
``get_tokenizer``, ``model(image, text)`` with the trained logit scale and bias, gradients through
the trainable parts, ``.to()`` moving the frozen encoders, and batched = unbatched encoding."""

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlalign
from tiny_models import sail_model
from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.models import TextBatch, UTAModel, VLModel
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, encode_store
from vlalign.train.config import OptimConfig
from vlalign.uta.artifact import save_student
from vlalign.uta.student import create_student
from vlalign.uta.teachers import create_teacher
from vlalign.utils.checkpoint import load_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
VISION, TEXT = "bundled:mobilenetv2?size=64&runtime=torch", "bundled:bow?dim=32"  # 2 x 2 tokens


@pytest.fixture(scope="module")
def sail_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAIL run trained 3 steps (sigmoid loss: a trained log scale and bias) on 64 digits."""
    root = tmp_path_factory.mktemp("api")
    encode_store(create_source("digits:train[:64]"), create_vision_encoder(VISION),
                 create_text_encoder(TEXT), root / "store", kinds=["raw"], specs=(VISION, TEXT),
                 options=EncodeOptions(shard_size=64, num_workers=0, progress=False))
    config = SailConfig(train_stores=[str(root / "store")], vision_head=HeadConfig("glu", 2),
                        text_head=HeadConfig("glu", 2), embed_dim=16, batch_size=16, epochs=1,
                        optim=OptimConfig(lr=1e-2), loss="sigmoid", checkpoint_every=100,
                        log_every=100, precision="fp32", num_threads=1)
    train_sail(config, root / "run", progress=False, max_steps=3)
    return root / "run"


@pytest.fixture(scope="module")
def uta_run(tmp_path_factory: pytest.TempPathFactory, sail_run: Path) -> Path:
    """A saved UTA model: a seeded one-block student of the trained SAIL run."""
    root = tmp_path_factory.mktemp("api_uta")
    spec = f"sail:{sail_run}"
    torch.manual_seed(0)
    student = create_student("eva02_tiny_patch14_224", 16, img_size=64, patch_size=32, dim=32,
                             depth=1, heads=2)
    save_student(root / "uta", student.eval(), create_teacher(spec), spec, {"step": 0})
    return root / "uta"


def _images(n: int = 5) -> list[Image.Image]:
    return [Image.new("RGB", (30 + 3 * i, 20 + 2 * i), (200, 37 * i % 256, 40)) for i in range(n)]


TEXTS = ["a red square", "zero", "one", "two", "a digit", "seven", "nine"]


def test_top_level_api_is_exported_and_load_model_opens_a_run(sail_run: Path) -> None:
    for name in ("load_model", "create_model_and_transforms", "get_tokenizer"):
        assert getattr(vlalign, name) is getattr(vlalign.models, name)
    model = vlalign.load_model(sail_run)
    assert isinstance(model, VLModel) and model.device == torch.device("cpu")


def test_hf_hub_names_are_resolved_by_the_hub_module(sail_run: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    hub = types.ModuleType("vlalign.models.hub")
    hub.resolve_hub_model = lambda name: asked.append(name) or sail_run
    monkeypatch.setitem(sys.modules, "vlalign.models.hub", hub)
    model = vlalign.load_model("hf-hub:org/tiny-sail")
    assert asked == ["hf-hub:org/tiny-sail"] and isinstance(model, VLModel)
    control = vlalign.load_model("random-heads:hf-hub:org/tiny-sail")
    assert control.heads.config.untrained_seed == 0
    assert vlalign.get_tokenizer("hf-hub:org/tiny-sail")("a") == ["a"]  # loads nothing
    assert len(asked) == 2


def test_logit_scale_and_bias_are_the_trained_ones_and_survive_save(
        sail_run: Path, uta_run: Path, tmp_path: Path) -> None:
    tensors = load_tensors(sail_run / "heads.safetensors")
    model = vlalign.load_model(sail_run)
    assert model.logit_scale.item() == tensors["loss.log_scale"].item()
    assert model.logit_bias.item() == tensors["loss.bias"].item()
    assert model.logit_scale.item() != pytest.approx(math.log(100))  # not the default
    model.save_pretrained(tmp_path / "saved")
    again = vlalign.load_model(tmp_path / "saved")
    assert again.logit_scale.item() == model.logit_scale.item()
    assert again.logit_bias.item() == model.logit_bias.item()
    out = model(_images(2), TEXTS[:2])
    assert out["logit_scale"].item() == pytest.approx(math.exp(tensors["loss.log_scale"].item()))
    assert out["logit_bias"].item() == tensors["loss.bias"].item()
    # a UTA student of these heads is compared with texts in their space: their scale and bias
    uta = vlalign.load_model(uta_run)
    assert uta.logit_scale.item() == model.logit_scale.item()
    assert uta.logit_bias.item() == model.logit_bias.item()
    # heads saved without their loss: the default scale, no bias
    sail = sail_model()
    assert sail.logit_scale.item() == pytest.approx(math.log(100)) and sail.logit_bias is None
    assert set(sail(_images(1), "x")) == {"image_features", "text_features", "logit_scale"}


def test_forward_returns_open_clip_outputs(sail_run: Path) -> None:
    model = vlalign.load_model(sail_run)
    with torch.no_grad():
        out = model(_images(3), TEXTS[:4])
        torch.testing.assert_close(out["image_features"],
                                   model.encode_image(_images(3), normalize=True))
        torch.testing.assert_close(out["text_features"],
                                   model.encode_text(TEXTS[:4], normalize=True))
        assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(4))
        image, text, scale, bias = model(_images(3), TEXTS[:4], output_dict=False)
        assert torch.equal(image, out["image_features"]) and torch.equal(scale, out["logit_scale"])
        assert set(model(text=TEXTS[:1])) == {"text_features", "logit_scale", "logit_bias"}
        assert model(image=_images(1), output_dict=False)[1] is None


def test_gradients_reach_the_heads_the_scale_and_the_bias(sail_run: Path) -> None:
    model = vlalign.load_model(sail_run)
    out = model(_images(4), TEXTS[:4])
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    loss = F.softplus(-(logits + out["logit_bias"]).diagonal()).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {
        "heads", "logit_scale", "logit_bias"}  # the backbones are not parameters
    model.zero_grad()
    with torch.no_grad():  # the caller's choice: no graph
        assert not model.encode_image(_images(2)).requires_grad
        assert not model.encode_text(TEXTS[:2]).requires_grad
    assert not model.classify(_images(2), ["zero", "one"]).requires_grad  # never a graph
    assert not model.encode_image_tokens(_images(2))[0].requires_grad


def test_gradients_reach_a_uta_student(uta_run: Path) -> None:
    model = vlalign.load_model(uta_run)
    assert isinstance(model, UTAModel)
    out = model(_images(2), TEXTS[:2])
    (out["logit_scale"] * out["image_features"] @ out["text_features"].T).diagonal().sum(
        ).backward()
    grads = [p.grad for p in model.student.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        assert not model.encode_image(_images(2)).requires_grad


def test_batched_encoding_equals_unbatched(sail_run: Path, uta_run: Path) -> None:
    images = _images(7)
    for model in (vlalign.load_model(sail_run), vlalign.load_model(uta_run)):
        with torch.no_grad():
            whole = model.encode_image(images, batch_size=len(images))
            torch.testing.assert_close(model.encode_image(images, batch_size=3), whole)
            pixels = torch.stack([model.preprocess(im) for im in images])
            torch.testing.assert_close(model.encode_image(pixels, batch_size=2), whole)
            texts = model.encode_text(TEXTS, batch_size=len(TEXTS))
            torch.testing.assert_close(model.encode_text(TEXTS, batch_size=2), texts)
            tokens, grid = model.encode_image_tokens(images, batch_size=len(images))
            chunked, chunked_grid = model.encode_image_tokens(images, batch_size=4)
            torch.testing.assert_close(chunked, tokens)
            assert chunked_grid == grid
        probs = model.classify(images, ["zero", "one", "two"], templates=["a {c}.", "the {c}."],
                               batch_size=2)
        torch.testing.assert_close(probs, model.classify(images, ["zero", "one", "two"],
                                                         templates=["a {c}.", "the {c}."]))


def test_pil_images_are_converted_chunk_by_chunk(sail_run: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = vlalign.load_model(sail_run)
    seen: list[int] = []
    encode = model.vision.encode
    monkeypatch.setattr(model.vision, "encode",
                        lambda pixels, tokens=False: seen.append(len(pixels)) or encode(pixels))
    with torch.no_grad():
        model.encode_image(_images(7), batch_size=3)
    assert seen == [3, 3, 1]
    with pytest.raises(UserError, match="batch_size"):
        model.encode_image(_images(1), batch_size=0)


def test_create_model_and_transforms_and_get_tokenizer(sail_run: Path) -> None:
    model, preprocess_train, preprocess_val = vlalign.create_model_and_transforms(sail_run)
    image = _images(1)[0]
    assert isinstance(model, VLModel) and model.dtype == torch.float32
    torch.testing.assert_close(preprocess_val(image), model.preprocess(image))
    torch.testing.assert_close(preprocess_train(image), model.preprocess(image))
    tokenizer = vlalign.get_tokenizer(sail_run)
    batch = tokenizer(["a cat", "a dog"])
    assert isinstance(batch, TextBatch) and batch.to("cpu") == ["a cat", "a dog"]
    assert tokenizer("a cat") == ["a cat"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(batch), model.encode_text(["a cat", "a dog"]))
    with pytest.raises(UserError, match="not token ids"):
        model.encode_text(torch.zeros(2, 77, dtype=torch.long))
    with pytest.raises(UserError, match="no such model folder"):
        vlalign.get_tokenizer(sail_run / "missing")
    with pytest.raises(UserError, match="unknown precision"):
        vlalign.create_model_and_transforms(sail_run, precision="fp8")


def test_precision_casts_the_heads_not_the_backbones(sail_run: Path) -> None:
    reference = vlalign.load_model(sail_run)
    model, _, _ = vlalign.create_model_and_transforms(sail_run, device="cpu", precision="bf16")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        out = model.encode_image(_images(3), normalize=True)
        assert out.dtype == torch.float32  # outputs stay float32
        torch.testing.assert_close(out, reference.encode_image(_images(3), normalize=True),
                                   atol=0.05, rtol=0.05)


def test_to_moves_the_frozen_encoders_with_the_parameters() -> None:
    model = sail_model("linear")  # MobileNetV2 (a torch network) + bag of words
    assert model.device == torch.device("cpu")
    assert model.to("cpu") is model and model.cpu() is model
    with torch.no_grad():
        before = model.encode_image(_images(2))
        model.to(torch.float64)
        assert model.dtype == torch.float64 and model.device == torch.device("cpu")
        assert all(p.dtype == torch.float64 for p in model.heads.parameters())
        assert all(p.dtype == torch.float32 for p in model.vision.net.parameters())
        torch.testing.assert_close(model.encode_image(_images(2)), before)
        model.float()
    model.to("meta")  # a device this machine has: encoders must follow the heads
    assert model.device.type == "meta" and model.logit_scale.device.type == "meta"
    assert all(p.device.type == "meta" for p in model.vision.net.parameters())
    assert model.vision.device.type == "meta" and model.text.device.type == "meta"


def test_to_moves_a_uta_teacher(uta_run: Path) -> None:
    model = vlalign.load_model(uta_run)
    model.to("meta")
    assert model.device.type == "meta"
    assert all(p.device.type == "meta" for p in model.student.parameters())
    assert all(p.device.type == "meta" for p in model.teacher.heads.parameters())
    assert model.teacher.vision.device.type == "meta"


def test_an_open_clip_model_keeps_its_own_scale_and_matches_open_clip(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    from test_backbones import TINY_CLIP

    torch.manual_seed(0)
    reference = open_clip.model.CLIP(**TINY_CLIP).eval()
    with torch.no_grad():
        reference.logit_scale.fill_(3.0)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model, _, preprocess = vlalign.create_model_and_transforms(f"open_clip:{tmp_path}")
    assert model.logit_scale.item() == 3.0 and model.logit_bias is None
    image = preprocess(_images(1)[0])[None]
    with torch.no_grad():
        ours = model(image, ["a cat", "a dog"])
        theirs = reference(image, open_clip.get_tokenizer(f"local-dir:{tmp_path}")(
            ["a cat", "a dog"]))
    for i, key in enumerate(("image_features", "text_features", "logit_scale")):
        torch.testing.assert_close(ours[key], theirs[i], rtol=1e-4, atol=1e-5)
