"""SAIL as an MLLM vision tower, on a tiny random DINOv2: LLaVA's tower interface, per-token
``head([CLS ; patch])`` outputs equal to ``encode_image_tokens`` before normalisation, gradients
into the head and, only when asked, into the backbone."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from tiny_models import save_tiny_dinov2
from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.errors import UserError
from vlalign.models import SAILVisionTower, VLModel
from vlalign.sail.artifact import AlignmentHeads, BackboneRecord, HeadsConfig
from vlalign.sail.heads import create_head

TEXT = "bundled:bow?dim=24"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A SAIL model folder: tiny DINOv2 (16-d tokens, 2 x 2 patches) + bag of words, GLU heads
    to 8-d with random weights."""
    root = tmp_path_factory.mktemp("tower")
    spec = "hf:" + str(save_tiny_dinov2(root / "dinov2"))
    vision, text = create_vision_encoder(spec), create_text_encoder(TEXT)
    torch.manual_seed(0)
    vision_head = create_head("glu", vision.dim, 8, width_factor=2)
    text_head = create_head("glu", text.dim, 8, width_factor=2)
    with torch.no_grad():
        for param in vision_head.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # layer norm not at its identity init
    config = HeadsConfig(vision_head=vision_head.config, text_head=text_head.config,
                         vision=BackboneRecord(spec, vision.identity, vision.dim),
                         text=BackboneRecord(TEXT, text.identity, text.dim), embed_dim=8)
    VLModel(vision, text, AlignmentHeads(vision_head, text_head, config)).save_pretrained(
        root / "model")
    return root / "model"


def _pixels(n: int = 3) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, 3, 28, 28)


def test_tower_interface_and_shapes(saved):
    tower = SAILVisionTower.from_pretrained(saved)
    assert (tower.hidden_size, tower.num_patches, tower.num_patches_per_side) == (8, 4, 2)
    assert tower.dtype == torch.float32 and tower.device == torch.device("cpu")
    assert (tower.config.image_size, tower.config.patch_size) == (28, 14)
    assert tower.dummy_feature.shape == (1, 8) and tower.is_loaded
    out = tower(_pixels())
    assert out.shape == (3, 4, 8) and out.requires_grad
    assert torch.equal(tower({"pixel_values": _pixels()}), out)  # the official tower's input
    per_image = tower(list(_pixels()))
    assert [t.shape for t in per_image] == [(1, 4, 8)] * 3
    torch.testing.assert_close(torch.cat(per_image), out)
    processor = tower.image_processor
    image = Image.new("RGB", (40, 30), (200, 40, 40))
    pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 28, 28) and processor.crop_size == {"height": 28, "width": 28}
    assert processor.image_mean == [0.485, 0.456, 0.406]
    model = VLModel.from_pretrained(saved)
    torch.testing.assert_close(pixels[0], model.preprocess(image))


def test_tower_equals_encode_image_tokens_before_normalisation(saved):
    model = VLModel.from_pretrained(saved)
    tower = SAILVisionTower.from_model(model)
    tokens, grid = model.encode_image_tokens(_pixels(), normalize=False)
    assert grid == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(tower(_pixels()), tokens, rtol=1e-6, atol=1e-6)
    # and the official formula, token by token: head([CLS ; patch_i]) of DINOv2's last layer
    from transformers import Dinov2Model

    backbone = Dinov2Model.from_pretrained(model.heads.config.vision.spec[3:]).eval()
    with torch.no_grad():
        hidden = backbone(pixel_values=_pixels()).last_hidden_state  # B x (1 + 4) x 16
        inputs = torch.cat([hidden[:, :1].expand(-1, 4, -1), hidden[:, 1:]], dim=-1)
        torch.testing.assert_close(tower(_pixels()), model.heads.vision_head(inputs),
                                   rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_head_not_the_frozen_backbone(saved):
    tower = SAILVisionTower.from_pretrained(saved)
    tower(_pixels()).square().sum().backward()
    grads = {name: p.grad for name, p in tower.named_parameters()}
    assert set(grads) == {f"head.{k}" for k, _ in tower.head.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    backbone = tower.vision.model
    assert not any(p.requires_grad or p.grad is not None for p in backbone.parameters())


def test_tune_backbone_trains_it_and_changes_nothing_else(saved):
    frozen = SAILVisionTower.from_pretrained(saved)
    tuned = SAILVisionTower.from_pretrained(saved, tune_backbone=True)
    out = tuned(_pixels())
    torch.testing.assert_close(out, frozen(_pixels()), rtol=1e-6, atol=1e-6)
    out.square().sum().backward()
    backbone = dict(tuned.named_parameters())
    assert any(k.startswith("backbone.") for k in backbone)
    assert backbone["backbone.embeddings.patch_embeddings.projection.weight"].grad.abs().sum() > 0
    assert backbone["head.w_out.weight"].grad.abs().sum() > 0


def test_cast_tower_gives_outputs_in_its_dtype(saved):
    tower = SAILVisionTower.from_pretrained(saved)
    reference = tower(_pixels()).detach()
    tower.to(dtype=torch.float64)
    out = tower(_pixels())
    assert tower.dtype == out.dtype == torch.float64
    torch.testing.assert_close(out.float(), reference, rtol=1e-5, atol=1e-5)


def test_backbone_without_tokens_or_tuning_is_refused():
    from tiny_models import sail_model

    model = sail_model("glu", width_factor=1)  # bundled MobileNetV2: tokens, but not hf:
    assert SAILVisionTower.from_model(model)(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16)
    with pytest.raises(UserError, match="tune_backbone=True needs a transformers"):
        SAILVisionTower.from_model(model, tune_backbone=True)
