"""The assembled model: save/load round trip, CLIP-style interface, dense per-token embeddings."""

import json

import pytest
import torch
from PIL import Image

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.errors import UserError
from vlalign.model import AlignmentHeads, VLModel, load_model
from vlalign.sail.heads import create_head

VISION, TEXT = "bundled:mobilenetv2?size=64&runtime=torch", "bundled:bow?dim=32"


def _model(kind: str = "linear") -> VLModel:
    vision, text = create_vision_encoder(VISION), create_text_encoder(TEXT)
    torch.manual_seed(0)
    options = {"width_factor": 2} if kind == "glu" else {}
    config = {"method": "sail", "embed_dim": 16,
              "vision": {"spec": VISION, "identity": vision.identity, "dim": vision.dim},
              "text": {"spec": TEXT, "identity": text.identity, "dim": text.dim}}
    vision_head = create_head(kind, vision.dim, 16, **options)
    text_head = create_head(kind, text.dim, 16, **options)
    config |= {"vision_head": vision_head.config, "text_head": text_head.config}
    return VLModel(vision, text, AlignmentHeads(vision_head, text_head, config))


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
