"""The assembled models: save/load round trip, CLIP-style interface, dense per-token embeddings,
heads.json's layout, and ``vlalign.load_model`` on SAIL and UTA models."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

import vlalign
from tiny_models import TEXT, VISION, sail_model, save_sail_teacher
from vlalign.errors import UserError
from vlalign.models import load_model
from vlalign.sail.artifact import HeadsConfig
from vlalign.uta.artifact import save_student, student_record
from vlalign.uta.student import create_student
from vlalign.uta.teachers import create_teacher


def _model(kind: str = "linear"):
    return sail_model(kind, **({"width_factor": 2} if kind == "glu" else {}))


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), (200, 10 * i, 40)) for i in range(3)]


def test_save_and_load_round_trip(tmp_path):
    model = _model("glu")
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["heads.json",
                                                                 "heads.safetensors"]
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.encode_image(_images()), model.encode_image(_images()))
    torch.testing.assert_close(loaded.encode_text(["a red square"]),
                               model.encode_text(["a red square"]))


def test_clip_benchmark_style_duck_typing():
    model = _model()
    tokens = model.tokenizer(["a cat", "a dog"]).to("cpu")
    text = model.encode_text(tokens, normalize=True)
    assert text.shape == (2, 16) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    pixels = torch.stack([model.preprocess(image) for image in _images()])
    torch.testing.assert_close(model.encode_image(pixels), model.encode_image(_images()))
    probs = model.classify(_images(), ["cat", "dog", "bird"], templates=["a {}.", "the {}."])
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(dim=1), torch.ones(3))


def test_dense_tokens_of_a_linear_head_average_to_the_pooled_embedding():
    model = _model("linear")
    tokens, grid = model.encode_image_tokens(_images(), normalize=False)
    assert grid == (2, 2) and tokens.shape == (3, 4, 16)
    pooled = model.encode_image(_images(), normalize=False)
    torch.testing.assert_close(tokens.mean(dim=1), pooled, rtol=1e-4, atol=1e-4)


def test_loading_refuses_other_weights_and_non_models(tmp_path):
    with pytest.raises(UserError, match="is not a vlalign model"):
        load_model(tmp_path)
    model = _model()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "heads.json").read_text())
    config["vision"]["identity"] = "bundled:mobilenetv2#sha256:000000000000"
    (tmp_path / "m" / "heads.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="heads were trained on"):
        load_model(tmp_path / "m")


def test_heads_json_keeps_the_trainers_layout():
    """A heads.json as `vlalign train sail` writes it parses and is written back unchanged."""
    saved = {"method": "sail", "step": 60, "embed_dim": 32,
             "vision_head": {"kind": "glu", "in_dim": 64, "out_dim": 32, "width_factor": 2},
             "text_head": {"kind": "glu", "in_dim": 64, "out_dim": 32, "width_factor": 2},
             "loss": "sigmoid",
             "vision": {"spec": VISION, "identity": "v#1", "dim": 64,
                        "preprocess": {"size": 8, "mean": [0.5] * 3, "std": [0.5] * 3,
                                       "interpolation": "bicubic"}},
             "text": {"spec": TEXT, "identity": "t#1", "dim": 64}}
    config = HeadsConfig.from_dict(saved)
    assert config.vision.spec == VISION and config.text.preprocess is None
    assert config.to_dict() == saved


def test_vlalign_load_model_opens_sail_and_uta_models(tmp_path):
    sail_dir = save_sail_teacher(tmp_path / "sail")
    sail = vlalign.load_model(sail_dir)
    assert isinstance(sail, vlalign.VLModel) and vlalign.load_model is load_model
    torch.testing.assert_close(sail.encode_image(_images()), _model().encode_image(_images()))
    control = vlalign.load_model(f"random-heads:{sail_dir}")
    assert control.heads.config == replace(sail.heads.config, untrained_seed=0)
    # the tiny teacher's heads are fresh seed-0 heads too, so the control equals it exactly
    torch.testing.assert_close(control.encode_image(_images()), sail.encode_image(_images()))

    teacher = create_teacher(f"sail:{sail_dir}")
    torch.manual_seed(0)
    student = create_student("eva02_tiny_patch14_224", 16, img_size=64, patch_size=32, dim=32,
                             depth=1, heads=2).eval()
    info = {"objective": "uta", "step": 7}
    save_student(tmp_path / "uta", student, teacher, f"sail:{sail_dir}", info)
    saved = json.loads((tmp_path / "uta" / "uta.json").read_text())
    assert saved == student_record(student, teacher, f"sail:{sail_dir}", info)
    uta = vlalign.load_model(tmp_path / "uta")
    assert isinstance(uta, vlalign.UTAModel) and uta.info == info and uta.config == saved
    pixels = torch.stack([uta.preprocess(image) for image in _images()])
    with torch.no_grad():
        torch.testing.assert_close(uta.encode_image(_images()), student(pixels).cls)
    torch.testing.assert_close(uta.encode_text(["a red square"]),
                               sail.encode_text(["a red square"]))


def test_import_vlalign_loads_the_models_on_first_use():
    code = ("import sys, vlalign; assert 'vlalign.models' not in sys.modules; "
            "vlalign.load_model; assert 'vlalign.models' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vlalign.nothing  # noqa: B018
