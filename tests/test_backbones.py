"""Frozen-encoder adapters: real bundled models, and tiny random hf/timm/open_clip models saved to
a temporary folder and loaded by path (nothing is ever downloaded)."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlalign.backbones import (
    TEXT_SCHEMES,
    VISION_SCHEMES,
    TextEncoder,
    VisionEncoder,
    create_text_encoder,
    create_vision_encoder,
    image_to_tensor,
    list_stages,
)
from vlalign.backbones import hf as hf_adapter
from vlalign.errors import UserError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "##s",
         "bridge", "diagram"]


def _batch(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_vit(enc: VisionEncoder, grid: tuple[int, int], width: int) -> None:
    """Shapes, grid, [CLS ; mean(patches)] pooling and determinism of a ViT-style encoder."""
    assert isinstance(enc, VisionEncoder)
    x = _batch(enc.preprocess.size)
    out = enc.encode(x, tokens=True)
    assert out.pooled.dtype == torch.float32 and out.pooled.shape == (2, 2 * width)
    assert out.tokens.shape == (2, grid[0] * grid[1], width) and out.grid == grid
    assert enc.dim == 2 * width and enc.token_dim == width
    assert not out.tokens.is_inference()  # usable later as autograd targets (UTA teacher)
    expected = torch.cat([out.cls, out.tokens.mean(1)], dim=1)
    torch.testing.assert_close(out.pooled, expected)
    torch.testing.assert_close(enc.encode(x).pooled, out.pooled)
    assert enc.encode(x).tokens is None


# --- bundled (real weights) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def coffee_image() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


def test_efficientnet_lite0_classifies_coffee(coffee_image: Image.Image) -> None:
    enc = create_vision_encoder("bundled:efficientnet-lite0")
    x = image_to_tensor(coffee_image, enc.preprocess)[None]
    top5 = enc.classify_logits(x).topk(5).indices[0].tolist()
    assert {967, 968, 504} & set(top5)  # espresso, cup, coffee mug
    out = enc.encode(x, tokens=True)
    assert out.pooled.shape == (1, 1280) and out.tokens.shape == (1, 49, 1280)


def test_mobilenetv2_shapes_and_pooling(coffee_image: Image.Image) -> None:
    enc = create_vision_encoder("bundled:mobilenetv2")
    assert (enc.dim, enc.token_dim, enc.preprocess.size) == (1280, 1280, 224)
    x = image_to_tensor(coffee_image, enc.preprocess)[None]
    out = enc.encode(x, tokens=True)
    assert out.pooled.shape == (1, 1280) and out.tokens.shape == (1, 49, 1280)
    assert out.grid == (7, 7) and not out.pooled.is_inference()
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    both = create_vision_encoder("bundled:mobilenetv2?pool=avgmax")
    pooled = both.encode(x).pooled
    assert both.dim == 2560
    torch.testing.assert_close(pooled[:, :1280], out.pooled)
    torch.testing.assert_close(pooled[:, 1280:], out.tokens.amax(1))
    assert both.identity != enc.identity and "sha256:" in enc.identity


@pytest.mark.parametrize("name, channels", [
    ("mobilenetv2", (16, 24, 32, 96, 320)), ("efficientnet-lite0", (16, 24, 40, 112, 320))])
def test_cnn_stages(name: str, channels: tuple[int, ...]) -> None:
    stages = list_stages(f"bundled:{name}")
    assert stages == ("stage1", "stage2", "stage3", "stage4", "stage5")
    x = _batch(64, n=1)  # 64 px keeps it fast: maps of 32, 16, 8, 4, 2 (112 ... 7 at 224 px)
    for stage, width, side in zip(stages, channels, (32, 16, 8, 4, 2)):
        enc = create_vision_encoder(f"bundled:{name}@{stage}?size=64")
        out = enc.encode(x, tokens=True)
        assert enc.dim == enc.token_dim == width and enc.stage == stage
        assert out.grid == (side, side) and out.tokens.shape == (1, side * side, width)
    with pytest.raises(UserError, match="stage1"):
        create_vision_encoder(f"bundled:{name}@stage9")


def test_random_weights_control() -> None:
    x = _batch(64)
    real = create_vision_encoder("bundled:mobilenetv2@stage4?size=64")
    rand = create_vision_encoder("bundled:mobilenetv2@stage4?size=64&weights=random")
    again = create_vision_encoder("bundled:mobilenetv2@stage4?weights=random&size=64")
    other = create_vision_encoder("bundled:mobilenetv2@stage4?size=64&weights=random&seed=1")
    assert "random-seed0" in rand.identity and rand.identity == again.identity
    assert not torch.allclose(real.encode(x).pooled, rand.encode(x).pooled)
    torch.testing.assert_close(rand.encode(x).pooled, again.encode(x).pooled)
    assert not torch.allclose(rand.encode(x).pooled, other.encode(x).pooled)
    # BatchNorm calibrated on noise: the whole random network's features keep an ordinary scale
    # (uncalibrated they were ~1e-8, which a float16 store flushed to zero)
    for name in ("mobilenetv2", "efficientnet-lite0"):
        pooled = create_vision_encoder(f"bundled:{name}?size=64&weights=random").encode(x).pooled
        assert pooled.std() > 1e-2 and pooled.half().count_nonzero() > pooled.numel() // 4


def test_pixels_control() -> None:
    enc = create_vision_encoder("bundled:pixels")
    x = _batch(32)
    out = enc.encode(x, tokens=True)
    assert enc.dim == 3072 and out.pooled.shape == (2, 3072) and out.grid == (8, 8)
    torch.testing.assert_close(out.pooled, x.flatten(1))
    torch.testing.assert_close(out.tokens[:, 0], x[:, :, :4, :4].flatten(1))
    assert enc.encode(_batch(64)).pooled.shape == (2, 3072)


def test_minilm_similarity_ordering() -> None:
    enc = create_text_encoder("bundled:minilm")
    assert isinstance(enc, TextEncoder) and enc.dim == 384
    cat, kitten, bridge = enc.encode(["a photo of a cat", "a picture of a kitten",
                                      "a diagram of a bridge"])
    assert F.cosine_similarity(cat, kitten, dim=0) > F.cosine_similarity(cat, bridge, dim=0)
    assert enc.encode([]).shape == (0, 384)


def test_e5_shape() -> None:
    enc = create_text_encoder("bundled:e5")
    out = enc.encode(["a photo of a cat", "a bridge"])
    assert enc.dim == 384 and out.shape == (2, 384) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-3, rtol=0)


def test_bow_is_registered_and_deterministic() -> None:
    from vlalign.backbones.base import BaseTextEncoder
    from vlalign.backbones.bow import HashedBagOfWords

    enc = create_text_encoder("bundled:bow")
    assert isinstance(enc, HashedBagOfWords) and isinstance(enc, BaseTextEncoder)
    assert enc.dim == 384 and enc.identity == "bundled:bow?dim=384&bigrams=1"
    texts = ["a photo of a cat", "a photo of a dog", "A photo, of a CAT!"]
    out = enc.encode(texts)
    assert out.shape == (3, 384) and out.dtype == torch.float32 and not out.is_inference()
    torch.testing.assert_close(out[0], out[2])  # the same words once lower-cased
    assert not torch.equal(out[0], out[1])
    torch.testing.assert_close(create_text_encoder("bundled:bow").encode(texts), out)
    assert not enc.encode([""]).any() and enc.encode([]).shape == (0, 384)
    small = create_text_encoder("bundled:bow?dim=16&bigrams=no")
    assert small.dim == 16 and small.identity == "bundled:bow?dim=16&bigrams=0"
    assert small.encode(["cat cat"]).abs().sum().item() == pytest.approx(1 + math.log(2))
    whole = small.encode(texts * 3)
    small.batch_size = 2  # the base class batches: chunks of 2 give the same vectors
    torch.testing.assert_close(small.encode(texts * 3), whole)
    with pytest.raises(UserError, match="valid: bigrams, dim"):
        create_text_encoder("bundled:bow?size=3")
    with pytest.raises(UserError, match="stages exist only for bundled CNNs"):
        create_text_encoder("bundled:bow@stage1")


# --- transformers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbones_hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random DINOv2 (with and without registers), CLIP and BERT folders."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        CLIPConfig,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    Dinov2Model(Dinov2Config(**small, image_size=28, patch_size=14)).save_pretrained(
        root / "dinov2")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        **small, image_size=28, patch_size=14, num_register_tokens=4)).save_pretrained(
        root / "dinov2reg")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    text = dict(small, vocab_size=len(WORDS), max_position_embeddings=32)
    BertModel(BertConfig(**text)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    clip = CLIPConfig(text_config=dict(text, eos_token_id=3, bos_token_id=2, pad_token_id=0),
                      vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(clip).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    return {name: str(root / name) for name in ("dinov2", "dinov2reg", "bert", "clip")}


def test_hf_dinov2(backbones_hf_models: dict[str, str]) -> None:
    enc = create_vision_encoder(f"hf:{backbones_hf_models['dinov2']}")
    assert enc.preprocess.size == 28 and enc.preprocess.mean == (0.485, 0.456, 0.406)
    _check_vit(enc, (2, 2), 32)
    big = create_vision_encoder(f"hf:{backbones_hf_models['dinov2']}?size=42")
    assert big.encode(_batch(42), tokens=True).grid == (3, 3)
    cls = create_vision_encoder(f"hf:{backbones_hf_models['dinov2']}?pool=cls")
    assert cls.dim == 32 and cls.identity != enc.identity


def test_hf_dinov2_registers_dropped(backbones_hf_models: dict[str, str]) -> None:
    from transformers import Dinov2WithRegistersModel

    enc = create_vision_encoder(f"hf:{backbones_hf_models['dinov2reg']}")
    _check_vit(enc, (2, 2), 32)
    model = Dinov2WithRegistersModel.from_pretrained(backbones_hf_models["dinov2reg"]).eval()
    x = _batch(28)
    with torch.no_grad():
        hidden = model(pixel_values=x).last_hidden_state  # CLS, 4 registers, 4 patches
    torch.testing.assert_close(enc.encode(x, tokens=True).tokens, hidden[:, 5:])


def test_hf_clip_vision(backbones_hf_models: dict[str, str]) -> None:
    from transformers import CLIPModel

    enc = create_vision_encoder(f"hf:{backbones_hf_models['clip']}")
    assert enc.preprocess.mean[0] == pytest.approx(0.48145466)
    _check_vit(enc, (4, 4), 32)
    proj = create_vision_encoder(f"hf:{backbones_hf_models['clip']}?pool=proj")
    x = _batch(32)
    out = proj.encode(x, tokens=True)
    model = CLIPModel.from_pretrained(backbones_hf_models["clip"]).eval()
    with torch.no_grad():
        vision = model.vision_model(pixel_values=x)
        expected = model.visual_projection(vision.pooler_output)
    torch.testing.assert_close(out.pooled, expected)
    assert out.tokens.shape == (2, 16, 16) and proj.token_dim == 16


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_hf_bert_text(backbones_hf_models: dict[str, str], pool: str) -> None:
    from transformers import AutoTokenizer, BertModel

    enc = create_text_encoder(f"hf:{backbones_hf_models['bert']}?pool={pool}")
    texts = ["a photo of cats", "dog", "a diagram of a bridge"]
    out = enc.encode(texts)
    assert enc.dim == 32 and out.shape == (3, 32) and out.dtype == torch.float32
    model = BertModel.from_pretrained(backbones_hf_models["bert"]).eval()
    tok = AutoTokenizer.from_pretrained(backbones_hf_models["bert"])
    with torch.no_grad():
        single = model(**tok(["dog"], return_tensors="pt")).last_hidden_state[0]
    torch.testing.assert_close(out[1], single.mean(0) if pool == "mean" else single[0])
    torch.testing.assert_close(enc.encode(texts), out)


def test_hf_clip_text(backbones_hf_models: dict[str, str]) -> None:
    enc = create_text_encoder(f"hf:{backbones_hf_models['clip']}")
    assert enc.dim == 16 and enc.encode(["a photo of a cat", "dog"]).shape == (2, 16)


# --- timm ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbones_timm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """timm's tiny test_vit (160 px, patch 16, 64-d) and test_resnet saved with save_for_hf."""
    import timm

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    for name in ("test_vit", "test_resnet"):
        model = timm.create_model(name, pretrained=False, img_size=64) if name == "test_vit" \
            else timm.create_model(name, pretrained=False)
        timm.models.save_for_hf(model, root / name, safe_serialization=True)
    return {name: str(root / name) for name in ("test_vit", "test_resnet")}


def test_timm_vit(backbones_timm_models: dict[str, str]) -> None:
    enc = create_vision_encoder(f"timm:{backbones_timm_models['test_vit']}")
    assert enc.preprocess.size == 64
    _check_vit(enc, (4, 4), 64)
    model_pool = create_vision_encoder(f"timm:{backbones_timm_models['test_vit']}?pool=model")
    assert model_pool.dim == 64


def test_timm_cnn(backbones_timm_models: dict[str, str]) -> None:
    enc = create_vision_encoder(f"timm:{backbones_timm_models['test_resnet']}")
    out = enc.encode(_batch(enc.preprocess.size), tokens=True)
    assert enc.dim == enc.token_dim == 96 and out.grid == (5, 5)
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))


def test_timm_random_by_name() -> None:
    a = create_vision_encoder("timm:test_vit?weights=random")
    b = create_vision_encoder("timm:test_vit?weights=random")
    assert a.identity == b.identity and "random-seed0" in a.identity
    x = _batch(a.preprocess.size, n=1)
    torch.testing.assert_close(a.encode(x).pooled, b.encode(x).pooled)


# --- open_clip ----------------------------------------------------------------------------------

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                            "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


@pytest.fixture(scope="module")
def backbones_open_clip_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny open_clip CLIP saved as a local-dir folder (config + weights)."""
    import open_clip

    root = tmp_path_factory.mktemp("open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP)
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.save(model.state_dict(), root / "open_clip_pytorch_model.bin")
    return str(root)


def test_open_clip_towers(backbones_open_clip_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    vision = create_vision_encoder(f"open_clip:{backbones_open_clip_model}")
    x = _batch(32)
    out = vision.encode(x, tokens=True)
    assert vision.dim == 16 and vision.token_dim == 16 and out.grid == (4, 4)
    assert out.tokens.shape == (2, 16, 16)
    reference = open_clip.create_model(f"local-dir:{backbones_open_clip_model}").eval()
    with torch.no_grad():
        torch.testing.assert_close(out.pooled, reference.encode_image(x))
        ids = open_clip.get_tokenizer(f"local-dir:{backbones_open_clip_model}")(["a cat"])
        expected_text = reference.encode_text(ids)
    text = create_text_encoder(f"open_clip:{backbones_open_clip_model}")
    torch.testing.assert_close(text.encode(["a cat"]), expected_text)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vlalign-tiny", TINY_CLIP)
    ckpt = f"{backbones_open_clip_model}/open_clip_pytorch_model.bin"
    by_arch = create_vision_encoder(f"open_clip:vlalign-tiny/{ckpt}")
    torch.testing.assert_close(by_arch.encode(x).pooled, out.pooled)


# --- errors and offline behaviour ---------------------------------------------------------------

def test_unknown_scheme_and_names_list_choices() -> None:
    with pytest.raises(UserError, match="bundled, hf, timm, open_clip"):
        create_vision_encoder("nope:thing")
    with pytest.raises(UserError, match="bundled, hf, st, open_clip"):
        create_text_encoder("timm:thing")
    with pytest.raises(UserError, match="mobilenetv2, efficientnet-lite0, pixels"):
        create_vision_encoder("bundled:resnet")
    with pytest.raises(UserError, match="minilm, e5, bow"):
        create_text_encoder("bundled:bert")
    with pytest.raises(UserError, match="valid: patch, size"):
        create_vision_encoder("bundled:pixels?colour=1")
    with pytest.raises(UserError, match="avg, max, avgmax"):
        create_vision_encoder("bundled:mobilenetv2?pool=median")
    assert VISION_SCHEMES == ("bundled", "hf", "timm", "open_clip")
    assert TEXT_SCHEMES == ("bundled", "hf", "st", "open_clip")


@pytest.mark.parametrize("spec, create", [
    ("hf:facebook/dinov2-small", create_vision_encoder),
    ("st:all-MiniLM-L6-v2", create_text_encoder),
    ("timm:vit_small_patch14_dinov2.lvd142m", create_vision_encoder),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", create_vision_encoder),
])
def test_hub_names_fail_fast_offline(spec: str, create, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_adapter, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(UserError, match="unreachable"):
        create(spec)
    assert time.perf_counter() - start < 10


def test_hub_probe_is_quick_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    assert hf_adapter.hub_reachable() is False
    assert time.perf_counter() - start < 3


def test_missing_local_folder_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        create_vision_encoder(f"hf:{tmp_path}/absent")


def test_wanted_repo_files_prefers_safetensors() -> None:
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx",
             "openvino/openvino_model.bin", "vocab.txt", "1_Pooling/config.json", "README.md"]
    assert sorted(hf_adapter.wanted_repo_files(files)) == [
        "1_Pooling/config.json", "config.json", "model.safetensors", "vocab.txt"]


@pytest.mark.parametrize("spec", ["bundled:mobilenetv2", "bundled:efficientnet-lite0@stage4"])
def test_onnxruntime_path_matches_eager_pytorch(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path))
    fast = create_vision_encoder(spec + "?runtime=onnx")
    eager = create_vision_encoder(spec + "?runtime=torch")
    assert fast.runtime == "onnx" and fast.identity == eager.identity
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a, b = fast.encode(pixels, tokens=True), eager.encode(pixels, tokens=True)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-4, atol=1e-4)
    assert list((tmp_path / "onnx").glob("*.onnx")), "the export is cached"
