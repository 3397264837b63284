"""Each backbone's own preprocessing: vlalign's pixels equal the library's own transform.

Tiny local models whose processors resize and CROP, fed non-square images (300 x 200 and 97 x 131,
noise and a photo). vlalign resizes with PIL as transformers' PIL backend, timm, open_clip and
torchvision do, so the comparisons are exact (torch.equal) except against transformers' default
torchvision backend, whose tensor resize differs from PIL's by at most 2 grey levels on noise
(1 on photos) in under 1% of the values. Plus the store's refusal of features made with another
transform. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.backbones import (
    Preprocess,
    create_vision_encoder,
    image_to_tensor,
    normalise,
    to_uint8,
)
from vlalign.backbones.base import crop_offset
from vlalign.data import create_source
from vlalign.errors import StoreError, UserError

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Noise and a photo, each 300 x 200 (wide) and 97 x 131 (tall, odd edges)."""
    from skimage import data

    rng = np.random.default_rng(0)
    photo = Image.fromarray(data.coffee())
    return [Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (131, 97, 3), dtype=np.uint8)),
            photo.resize((300, 200), Image.Resampling.BILINEAR),
            photo.resize((97, 131), Image.Resampling.BILINEAR)]


# --- the recipe and its two steps ---------------------------------------------------------------

def test_uint8_then_normalise_is_image_to_tensor(images: list[Image.Image]) -> None:
    pre = Preprocess(size=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), resize="shortest",
                     resize_size=28, crop=24)
    pixels = torch.stack([to_uint8(im, pre) for im in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, 24, 24)
    expected = torch.stack([image_to_tensor(im, pre) for im in images])
    assert torch.equal(normalise(pixels, pre), expected)  # batched, as on the device
    assert torch.equal(normalise(pixels[0], pre), expected[0])
    assert to_uint8(images[0].convert("L"), pre).shape == (3, 24, 24)  # any mode: RGB first


def test_recipe_round_trips_and_reads_old_records() -> None:
    pre = Preprocess(size=224, mean=(0.5,) * 3, std=(0.5,) * 3, resize="shortest",
                     resize_size=256, crop=224, crop_rounding="floor", interpolation="bilinear")
    record = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(record) == pre
    old = Preprocess.from_dict({"size": 8, "mean": [0.5] * 3, "std": [0.5] * 3,
                                "interpolation": "bilinear"})  # before resize/crop were kept
    assert (old.resize, old.resize_size, old.crop) == ("squash", (8, 8), None)
    big = pre.with_size(448)  # size=: the input side, the resize keeps the crop's share
    assert (big.size, big.resize_size, big.crop) == (448, 512, 448)
    assert pre.with_size(64).resize_size == 73  # floor(256 * 64 / 224)
    with pytest.raises(UserError, match="crop must be the input size"):
        Preprocess(size=224, mean=(0.5,) * 3, std=(0.5,) * 3, resize="shortest", resize_size=256)
    with pytest.raises(UserError, match="valid: nearest, bilinear, bicubic"):
        Preprocess(size=8, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="area")


@pytest.mark.parametrize("length", [5, 6, 7, 10, 11, 13])
@pytest.mark.parametrize("crop", [4, 5, 8, 9, 12])
def test_crop_offsets_match_torchvision_and_transformers(length: int, crop: int) -> None:
    """Both libraries' centre crops, including zero padding when the crop is larger."""
    import torchvision.transforms.functional as TF
    from transformers.image_transforms import center_crop

    pixels = np.arange(3 * length * (length + 1)) % 250 + 1  # no zeros: padding shows
    image = Image.fromarray(pixels.astype(np.uint8).reshape(length + 1, length, 3))
    common = dict(mean=(0.0,) * 3, std=(1.0,) * 3, rescale=1.0, resize_size=image.size[::-1])
    ours = to_uint8(image, Preprocess(size=crop, crop=crop, **common))
    assert torch.equal(ours, TF.pil_to_tensor(TF.center_crop(image, [crop, crop])))
    floor = to_uint8(image, Preprocess(size=crop, crop=crop, crop_rounding="floor", **common))
    hf = center_crop(np.asarray(image).transpose(2, 0, 1), (crop, crop))
    assert torch.equal(floor, torch.from_numpy(np.ascontiguousarray(hf)))
    assert crop_offset(length, crop, "floor") == (length - crop) // 2


# --- transformers -------------------------------------------------------------------------------

HF_PROCESSORS = {
    # DINOv2's: shorter edge 256, centre crop 224, bicubic, ImageNet mean/std
    "dinov2": {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256},
               "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
               "resample": 3, **IMAGENET},
    # ViT's / SigLIP's: a square resize, bilinear
    "vit": {"image_processor_type": "ViTImageProcessor", "size": {"height": 48, "width": 48},
            "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    # CLIP's: shorter edge = crop (class defaults fill in mean/std)
    "clip": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 56},
             "crop_size": {"height": 56, "width": 56}, "do_center_crop": True, "resample": 3},
    # ConvNeXT's own resize: shorter edge 64 / crop_pct, then a crop of 64
    "convnext": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 64},
                 "crop_pct": 0.875, "resample": 3, **IMAGENET},
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random DINOv2 (32-d, patch 14) saved once per processor config."""
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("hf_pre")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, image_size=28, patch_size=14)
                ).save_pretrained(root / "model")
    dirs = {}
    for name, processor in HF_PROCESSORS.items():
        shutil.copytree(root / "model", root / name)
        (root / name / "preprocessor_config.json").write_text(json.dumps(processor))
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("name", list(HF_PROCESSORS))
def test_hf_pixels_equal_the_image_processor(name: str, hf_dirs: dict[str, Path],
                                             images: list[Image.Image]) -> None:
    from transformers import AutoImageProcessor

    enc = create_vision_encoder(f"hf:{hf_dirs[name]}")
    pil = AutoImageProcessor.from_pretrained(str(hf_dirs[name]), backend="pil")
    fast = AutoImageProcessor.from_pretrained(str(hf_dirs[name]))  # the default backend
    grey = torch.tensor(enc.preprocess.std).view(3, 1, 1) * 255  # one grey level, normalised
    for image in images:
        ours = image_to_tensor(image, enc.preprocess)
        assert torch.equal(ours, pil(image, return_tensors="pt").pixel_values[0])
        off = ((ours - fast(image, return_tensors="pt").pixel_values[0]) * grey).abs()
        assert off.max() < 2.01 and (off > 0.5).float().mean() < 0.01  # tensor vs PIL resize
    out = enc.encode(image_to_tensor(images[0], enc.preprocess)[None], tokens=True)
    side = enc.preprocess.size // 14
    assert out.grid == (side, side)


def test_hf_dinov2_recipe_and_size_option(hf_dirs: dict[str, Path],
                                          images: list[Image.Image]) -> None:
    """DINOv2's 256 -> 224; size=112 keeps the crop's share: 128 -> 112, as the processor
    configured for that size does."""
    from transformers import AutoImageProcessor

    enc = create_vision_encoder(f"hf:{hf_dirs['dinov2']}")
    pre = enc.preprocess
    assert (pre.size, pre.resize, pre.resize_size, pre.crop, pre.interpolation) == (
        224, "shortest", 256, 224, "bicubic")
    small = create_vision_encoder(f"hf:{hf_dirs['dinov2']}?size=112").preprocess
    assert (small.size, small.resize_size, small.crop) == (112, 128, 112)
    reference = AutoImageProcessor.from_pretrained(
        str(hf_dirs["dinov2"]), backend="pil", size={"shortest_edge": 128},
        crop_size={"height": 112, "width": 112})
    for image in images:
        assert torch.equal(image_to_tensor(image, small),
                           reference(image, return_tensors="pt").pixel_values[0])


# --- timm ---------------------------------------------------------------------------------------

TIMM_CONFIGS = {
    "center": {"crop_pct": 0.9, "interpolation": "bicubic"},
    "squash": {"crop_pct": 0.8, "crop_mode": "squash", "interpolation": "bilinear",
               "mean": (0.1, 0.2, 0.3), "std": (0.3, 0.2, 0.1)},
}


@pytest.mark.parametrize("mode", list(TIMM_CONFIGS))
def test_timm_pixels_equal_its_eval_transform(mode: str, tmp_path: Path,
                                              images: list[Image.Image]) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, img_size=64, pretrained_cfg_overlay={
        "input_size": (3, 64, 64), **TIMM_CONFIGS[mode]})
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    enc = create_vision_encoder(f"timm:{tmp_path}")
    assert enc.preprocess.crop == 64 and enc.preprocess.resize == (
        "shortest" if mode == "center" else "squash")
    for image in images:
        assert torch.equal(image_to_tensor(image, enc.preprocess), transform(image))


def test_timm_size_option_is_timms_transform_at_that_size(tmp_path: Path,
                                                          images: list[Image.Image]) -> None:
    import timm

    model = timm.create_model("test_vit", pretrained=False, img_size=64, pretrained_cfg_overlay={
        "input_size": (3, 64, 64), "crop_pct": 0.9})
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    enc = create_vision_encoder(f"timm:{tmp_path}?size=48")
    transform = timm.data.create_transform(**timm.data.resolve_data_config(
        {"input_size": (3, 48, 48)}, model=model))  # floor(48 / 0.9) = 53, crop 48
    assert (enc.preprocess.resize_size, enc.preprocess.crop) == (53, 48)
    for image in images:
        assert torch.equal(image_to_tensor(image, enc.preprocess), transform(image))


# --- open_clip ----------------------------------------------------------------------------------

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                            "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


@pytest.mark.parametrize("preprocess_cfg", [
    {}, {"resize_mode": "squash", "interpolation": "bilinear", "mean": [0.5] * 3,
         "std": [0.25] * 3}], ids=["default-shortest", "squash"])
def test_open_clip_pixels_equal_its_preprocess(preprocess_cfg: dict, tmp_path: Path,
                                               images: list[Image.Image]) -> None:
    import open_clip

    from vlalign.uta.teachers import create_teacher

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess_cfg}))
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    enc = create_vision_encoder(f"open_clip:{tmp_path}")
    for image in images:
        assert torch.equal(image_to_tensor(image, enc.preprocess), transform(image))
    assert create_teacher(f"open_clip:{tmp_path}").preprocess == enc.preprocess


# --- bundled CNNs -------------------------------------------------------------------------------

def test_bundled_cnns_follow_their_documented_transforms(images: list[Image.Image]) -> None:
    """MobileNetV2: its weights' ImageNet validation transform (tonylins/pytorch-mobilenet-v2:
    Resize(256), CenterCrop(224), bilinear, ImageNet mean/std). EfficientNet-Lite0: timm's
    transform for the same TF weights (tf_efficientnet_lite0: crop_pct 0.875, bicubic, 0.5)."""
    import timm
    from torchvision import transforms

    mobilenet = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    small = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64),
                                transforms.ToTensor(),
                                transforms.Normalize([0.485, 0.456, 0.406],
                                                     [0.229, 0.224, 0.225])])
    lite = timm.data.create_transform(input_size=224, crop_pct=0.875, interpolation="bicubic",
                                      mean=(0.5,) * 3, std=(0.5,) * 3)
    cases = [("bundled:mobilenetv2?runtime=torch", mobilenet),
             ("bundled:mobilenetv2?size=64&runtime=torch", small),  # size = the crop
             ("bundled:efficientnet-lite0@stage1?runtime=torch", lite)]
    for spec, transform in cases:
        pre = create_vision_encoder(spec).preprocess
        for image in images:
            assert torch.equal(image_to_tensor(image, pre), transform(image)), spec


# --- the store refuses features of another transform --------------------------------------------

VISION, TEXT = "bundled:pixels?size=8", "bundled:bow?dim=16"


def _encode(out: Path, data: str = "digits:train[:40]") -> None:
    from vlalign.backbones import create_text_encoder
    from vlalign.store import EncodeOptions, encode_store

    encode_store(create_source(data), create_vision_encoder(VISION), create_text_encoder(TEXT),
                 out, kinds=["raw"], specs=(VISION, TEXT),
                 options=EncodeOptions(shard_size=16, batch_size=8, num_workers=0,
                                       progress=False))


def _rewrite(out: Path, preprocess: dict, status: str = "encoding") -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["vision"]["preprocess"] = preprocess
    manifest["status"] = status
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_resuming_into_a_store_of_another_transform_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "s"
    _encode(out)
    recorded = json.loads((out / "manifest.json").read_text())["vision"]["preprocess"]
    assert recorded == create_vision_encoder(VISION).preprocess.to_dict()
    # made before this change: only size, mean, std and interpolation were recorded
    _rewrite(out, {k: recorded[k] for k in ("size", "mean", "std", "interpolation")})
    with pytest.raises(StoreError, match="records no resize/crop") as caught:
        _encode(out)
    message = str(caught.value)
    assert str(out) in message and "\n" not in message and "would mix" in message
    assert isinstance(caught.value, UserError)
    _rewrite(out, {**recorded, "resize": "shortest", "resize_size": 9, "crop": 8})
    with pytest.raises(StoreError, match='resize: stored "shortest", now "squash"') as caught:
        _encode(out)
    assert str(out) in str(caught.value) and "crop: stored 8, now null" in str(caught.value)
    _rewrite(out, recorded)  # the same transform: the resume goes ahead
    _encode(out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_mixing_stores_of_different_transforms_is_refused(tmp_path: Path) -> None:
    from vlalign.store import FeatureStore
    from vlalign.store.stream import StoreMix

    _encode(tmp_path / "a")
    _encode(tmp_path / "b")
    recorded = FeatureStore(tmp_path / "b").transform
    StoreMix([FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")])
    _rewrite(tmp_path / "b", {**recorded, "interpolation": "bicubic"}, status="complete")
    with pytest.raises(StoreError, match='interpolation: first "bilinear", this "bicubic"'
                       ) as caught:
        StoreMix([FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")])
    assert str(tmp_path / "b") in str(caught.value) and "\n" not in str(caught.value)


def test_dense_tokens_of_pil_images_cover_the_whole_image(images: list[Image.Image]) -> None:
    """encode_image_tokens resizes PIL images whole (no crop): segmentation maps the token grid
    onto the whole mask. encode_image keeps the backbone's crop."""
    from tiny_models import sail_model

    model = sail_model()
    pre = model.image_preprocess
    assert pre.crop == 64 and pre.whole_image().crop is None
    whole = torch.stack([image_to_tensor(im, pre.whole_image()) for im in images[:2]])
    tokens, grid = model.encode_image_tokens(images[:2])
    torch.testing.assert_close(tokens, model.encode_image_tokens(whole)[0])
    cropped = torch.stack([image_to_tensor(im, pre) for im in images[:2]])
    torch.testing.assert_close(model.encode_image(images[:2]), model.encode_image(cropped))
