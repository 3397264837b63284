"""The official SAIL checkpoint layout: strict import into a vlalign model, exact export.

The reference is the official code's own module structure, transcribed below from
lezhang7/SAIL ``model/sail_model.py`` (``AlignmentLayer`` with ``linear_type="star"``) and
``model/linear.py`` (``StarMLP`` with ``nn.ReLU6()``): its ``state_dict()`` gives the key set
and order the released ``sail_dinov2l_*.pt`` files have, and its forward is the head formula.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tiny_models import save_tiny_dinov2
from vlalign.backbones import create_text_encoder
from vlalign.cli import main
from vlalign.data import create_source
from vlalign.errors import UserError
from vlalign.models import VLModel, load_model
from vlalign.sail.config import HeadConfig, SailConfig
from vlalign.sail.official import export_official, import_official, official_keys, read_official
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.train.config import OptimConfig
from vlalign.utils.checkpoint import load_tensors

TEXT = "bundled:bow?dim=24"
# The official key list, as model/sail_model.py + model/linear.py define it (state_dict order).
OFFICIAL_KEYS = [
    "logit_scale", "logit_bias",
    "vision_mapping_network.f1.weight", "vision_mapping_network.f1.bias",
    "vision_mapping_network.f2.weight", "vision_mapping_network.f2.bias",
    "vision_mapping_network.g.weight", "vision_mapping_network.g.bias",
    "vision_layer_norm.weight", "vision_layer_norm.bias",
    "text_mapping_network.f1.weight", "text_mapping_network.f1.bias",
    "text_mapping_network.f2.weight", "text_mapping_network.f2.bias",
    "text_mapping_network.g.weight", "text_mapping_network.g.bias",
    "text_layer_norm.weight", "text_layer_norm.bias",
]


class OfficialStarMLP(nn.Module):
    """model/linear.py StarMLP (activation nn.ReLU6()): g(act(clamp f1 x) * clamp f2 x)."""

    def __init__(self, input_dim: int, output_dim: int, width_factor: int) -> None:
        super().__init__()
        self.f1 = nn.Linear(input_dim, width_factor * input_dim)
        self.f2 = nn.Linear(input_dim, width_factor * input_dim)
        self.act = nn.ReLU6()
        self.g = nn.Linear(width_factor * input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.clamp(self.f1(x), min=-1e3, max=1e3)
        x2 = torch.clamp(self.f2(x), min=-1e3, max=1e3)
        return self.g(self.act(x1) * x2)


class OfficialAlignmentLayer(nn.Module):
    """model/sail_model.py AlignmentLayer(linear_type="star"): attributes in the same order."""

    def __init__(self, vision_dim: int, text_dim: int, target: int, width_factor: int) -> None:
        super().__init__()
        self.vision_mapping_network = OfficialStarMLP(vision_dim, target, width_factor)
        self.vision_layer_norm = nn.LayerNorm(vision_dim)
        self.text_mapping_network = OfficialStarMLP(text_dim, target, width_factor)
        self.text_layer_norm = nn.LayerNorm(text_dim)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))

    def image(self, features: torch.Tensor) -> torch.Tensor:
        return self.vision_mapping_network(self.vision_layer_norm(features))

    def text(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_mapping_network(self.text_layer_norm(features))


def random_official(vision_dim: int, text_dim: int, target: int = 8,
                    width_factor: int = 2) -> OfficialAlignmentLayer:
    """An official layer with every tensor random (layer norms too), logit scale log(~20)."""
    torch.manual_seed(1)
    layer = OfficialAlignmentLayer(vision_dim, text_dim, target, width_factor)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.randn_like(param) * (0.5 if "weight" in name else 0.1))
            if "layer_norm.weight" in name:
                param.add_(1.0)
        layer.logit_scale.fill_(math.log(20.0) + 0.1)
        layer.logit_bias.fill_(-9.5)
    return layer.eval()


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> str:
    return "hf:" + str(save_tiny_dinov2(tmp_path_factory.mktemp("hf") / "dinov2"))


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[OfficialAlignmentLayer, Path]:
    layer = random_official(vision_dim=32, text_dim=24)  # tiny DINOv2 [CLS ; mean] = 2 x 16
    path = tmp_path_factory.mktemp("official") / "sail.pt"
    torch.save(layer.state_dict(), path)
    return layer, path


def test_official_keys_are_the_official_modules_keys():
    layer = random_official(vision_dim=6, text_dim=4)
    assert official_keys() == OFFICIAL_KEYS == list(layer.state_dict())
    assert layer.state_dict()["logit_scale"].shape == (1,)  # a log scale: forward uses .exp()


def test_imported_model_embeds_as_the_official_head_formula(official, dinov2, tmp_path):
    layer, path = official
    out = import_official(path, dinov2, TEXT, tmp_path / "model")
    model = load_model(out)
    assert isinstance(model, VLModel)
    pixels = torch.randn(3, 3, 28, 28)
    # the official tower: DINOv2's last hidden state, [CLS ; mean(patches)], through the head
    from transformers import Dinov2Model

    backbone = Dinov2Model.from_pretrained(dinov2.removeprefix("hf:")).eval()
    with torch.no_grad():
        hidden = backbone(pixel_values=pixels).last_hidden_state
        features = torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1)
        official_images = F.normalize(layer.image(features), dim=-1)
        texts = ["a red square", "a cat", "blue"]
        official_texts = F.normalize(layer.text(create_text_encoder(TEXT).encode(texts)), dim=-1)
    torch.testing.assert_close(model.encode_image(pixels, normalize=True), official_images,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encode_text(texts, normalize=True), official_texts,
                               rtol=1e-5, atol=1e-5)
    tensors = load_tensors(out / "heads.safetensors")
    assert tensors["loss.log_scale"] == layer.logit_scale[0]  # kept as the log, like vlalign's
    assert tensors["loss.bias"] == layer.logit_bias[0]
    heads = json.loads((out / "heads.json").read_text())
    assert heads["vision_head"] == {"kind": "glu", "in_dim": 32, "out_dim": 8, "width_factor": 2}
    assert heads["vision"]["spec"] == dinov2 and heads["text"]["spec"] == TEXT


def test_export_of_import_is_the_original_exactly(official, dinov2, tmp_path):
    layer, path = official
    model = import_official(path, dinov2, TEXT, tmp_path / "model")
    exported = export_official(model, tmp_path / "again.pt")
    original = torch.load(path, weights_only=True)
    again = torch.load(exported, weights_only=True)
    assert list(again) == list(original) == OFFICIAL_KEYS
    for key, value in original.items():
        assert again[key].dtype == value.dtype and again[key].shape == value.shape, key
        assert torch.equal(again[key], value), key
    OfficialAlignmentLayer(32, 24, 8, 2).load_state_dict(again, strict=True)


def test_trained_run_exports_to_a_strictly_loadable_official_layer(tmp_path):
    vision, text = "bundled:pixels?size=8", "bundled:bow?dim=32"
    from vlalign.backbones import create_vision_encoder

    encode_store(create_source("digits:train[:64]"), create_vision_encoder(vision),
                 create_text_encoder(text), tmp_path / "store", kinds=["raw", "rewritten"],
                 specs=(vision, text), options=EncodeOptions(shard_size=64, num_workers=0,
                                                             progress=False))
    config = SailConfig(train_stores=[str(tmp_path / "store")], vision_head=HeadConfig("glu", 2),
                        text_head=HeadConfig("glu", 2), embed_dim=8, batch_size=32, epochs=1,
                        optim=OptimConfig(lr=1e-3), loss_block_size=16, precision="fp32",
                        num_threads=1)
    train_sail(config, tmp_path / "run", progress=False)
    path = export_official(tmp_path / "run", tmp_path / "run.pt")
    state = torch.load(path, weights_only=True)
    assert list(state) == OFFICIAL_KEYS
    store = FeatureStore(tmp_path / "store")
    layer = OfficialAlignmentLayer(store.image_dim, store.text_dim, 8, 2).eval()
    layer.load_state_dict(state, strict=True)
    heads = VLModel.from_pretrained(tmp_path / "run").heads
    tensors = load_tensors(tmp_path / "run" / "heads.safetensors")
    assert state["logit_scale"][0] == tensors["loss.log_scale"]
    rows = torch.arange(16).numpy()
    images = torch.from_numpy(store.images(rows)).float()
    captions = torch.from_numpy(store.texts(rows, "raw")).float()
    with torch.no_grad():
        torch.testing.assert_close(layer.image(images),
                                   heads.encode_image_features(images, normalize=False))
        torch.testing.assert_close(layer.text(captions),
                                   heads.encode_text_features(captions, normalize=False))
    # and back: importing the export gives the same heads
    again = import_official(path, vision, text, tmp_path / "again")
    assert export_official(again, tmp_path / "again.pt").read_bytes() == path.read_bytes()


def test_training_checkpoint_wrapper_and_ddp_prefix_are_accepted(official, tmp_path):
    layer, _ = official
    wrapped = {"epoch": 3, "name": "sail", "optimizer": {"state": {}, "param_groups": []},
               "state_dict": {f"module.{k}": v for k, v in layer.state_dict().items()}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")
    state = read_official(tmp_path / "epoch_3.pt")
    assert list(state) == OFFICIAL_KEYS


def _saved(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    return path


def test_unknown_missing_and_misshapen_keys_are_one_line_errors(official, dinov2, tmp_path):
    layer, _ = official
    state = layer.state_dict()
    broken = {k: v for k, v in state.items() if k != "text_layer_norm.bias"}
    broken["vision_mapping_network.extra.weight"] = torch.zeros(2)
    with pytest.raises(UserError, match=r"missing text_layer_norm\.bias; unknown "
                                        r"vision_mapping_network\.extra\.weight"):
        read_official(_saved(tmp_path, broken))
    linear = {"logit_scale": torch.zeros(1), "logit_bias": torch.zeros(1),
              "vision_mapping_network.weight": torch.zeros(8, 32),
              "vision_mapping_network.bias": torch.zeros(8)}
    with pytest.raises(UserError, match="linear .alignment-probing. layout"):
        read_official(_saved(tmp_path, linear))
    misshapen = dict(state, **{"vision_mapping_network.f2.weight": torch.zeros(64, 31)})
    with pytest.raises(UserError, match=r"vision_mapping_network\.f2\.weight is \(64, 31\)"):
        import_official(_saved(tmp_path, misshapen), dinov2, TEXT, tmp_path / "m")
    with pytest.raises(UserError, match="text head takes 24-d features, but bundled:bow.dim=16 "
                                        "gives 16-d"):
        import_official(_saved(tmp_path, state), dinov2, "bundled:bow?dim=16", tmp_path / "m")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="not a weights-only torch checkpoint"):
        read_official(tmp_path / "garbage.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused_not_run(tmp_path, capsys):
    torch.save({"state_dict": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to unpickle"):
        read_official(tmp_path / "evil.pt")
    assert "must never run" not in capsys.readouterr().out


def test_export_refuses_heads_the_layout_cannot_hold(tmp_path):
    from tiny_models import sail_model

    sail_model("linear").save_pretrained(tmp_path / "linear")
    with pytest.raises(UserError, match="StarMLP .glu. heads on both sides; this model has "
                                        "linear .vision. and linear .text."):
        export_official(tmp_path / "linear", tmp_path / "x.pt")
    sail_model("glu", width_factor=1).save_pretrained(tmp_path / "glu")  # saved without the loss
    with pytest.raises(UserError, match="no loss.log_scale"):
        export_official(tmp_path / "glu", tmp_path / "x.pt")


def test_cli_import_and_export(official, dinov2, tmp_path, capsys):
    layer, path = official
    out = tmp_path / "model"
    assert main(["import-sail", str(path), "--vision", dinov2, "--text", TEXT, "--out",
                 str(out)]) == 0
    assert f"model written to {out}" in capsys.readouterr().out
    assert main(["export-sail", str(out), "--out", str(tmp_path / "out.pt")]) == 0
    assert "18 tensors" in capsys.readouterr().out
    assert main(["import-sail", str(path), "--vision", dinov2, "--text", TEXT, "--out",
                 str(out)]) == 2
    assert "already holds a model" in capsys.readouterr().err
    broken = {k: v for k, v in layer.state_dict().items() if k != "logit_bias"}
    assert main(["import-sail", str(_saved(tmp_path, broken)), "--vision", dinov2, "--text",
                 TEXT, "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlalign: error: ") and "missing logit_bias" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "import-sail" in listing and "export-sail" in listing
