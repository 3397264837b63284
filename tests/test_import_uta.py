"""`vlalign import-uta`: an official UTA checkpoint becomes a vlalign UTA model folder.

The reference is the official code's own module structure, transcribed below from jihaonew/UTA
``eva_vit_model/eva_vit.py`` (``EVAVisionTransformer`` with eva_base_p16's flags: subln,
naiveswiglu, rope with intp_freq, qkv_bias, no mean pooling, LayerNorm eps 1e-6), ``rope.py``
(``VisionRotaryEmbeddingFast``) and ``transformer.py`` (``TextTransformer`` with its xformers
``Attention``, here as the same softmax attention with a causal mask), at a small size: its
``state_dict()`` gives the official key names, its forward the official embeddings.
"""

import json
import math
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlalign.cli import main
from vlalign.errors import UserError
from vlalign.models import UTAModel, load_model
from vlalign.uta.official import (
    RELEASES,
    VisualShape,
    official_keys,
    read_checkpoint,
    student_config,
    text_heads,
)
from vlalign.uta.teachers import create_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
DIM, DEPTH, HEADS, IMG, PATCH, OUT = 64, 2, 2, 32, 16, 48
TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS, CONTEXT = 64, 2, 2, 77
TEXTS = ["a photo of a cat.", "a diagram", "A DOG!"]


# --- eva_vit.py / rope.py -----------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rope.py rotate_half: '... (d r) -> ... d r', (x1, x2) -> (-x2, x1), back."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class VisionRotaryEmbeddingFast(nn.Module):
    def __init__(self, dim: int, pt_seq_len: int, ft_seq_len: int, theta: float = 10000) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        freqs = torch.einsum("..., f -> ... f", t, freqs).repeat_interleave(2, dim=-1)
        side = ft_seq_len  # broadcat((freqs[:, None, :], freqs[None, :, :]), dim=-1)
        freqs = torch.cat((freqs[:, None, :].expand(side, side, -1),
                           freqs[None, :, :].expand(side, side, -1)), dim=-1)
        self.register_buffer("freqs_cos", freqs.cos().view(-1, freqs.shape[-1]))
        self.register_buffer("freqs_sin", freqs.sin().view(-1, freqs.shape[-1]))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin


class Attention(nn.Module):
    """eva_vit.Attention(subln=True, qkv_bias=True, rope=rope): the non-xattn path."""

    def __init__(self, dim: int, num_heads: int, rope: nn.Module) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.inner_attn_ln = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = F.linear(x, self.k_proj.weight, None)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        q, k, v = (t.reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        q = torch.cat((q[:, :, :1, :], self.rope(q[:, :, 1:, :])), -2).type_as(v)
        k = torch.cat((k[:, :, :1, :], self.rope(k[:, :, 1:, :])), -2).type_as(v)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(self.inner_attn_ln(x))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.ffn_ln = nn.LayerNorm(hidden, eps=1e-6)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, rope: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class EVAVisionTransformer(nn.Module):
    """eva_base_p16's flags (mlp_ratio 2.6667, pt_hw_seq_len 16) at a small size."""

    def __init__(self, img_size: int, patch: int, dim: int, depth: int, heads: int,
                 num_classes: int, mlp_ratio: float = 2.6667) -> None:
        super().__init__()
        grid = img_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.rope = VisionRotaryEmbeddingFast(dim // heads // 2, pt_seq_len=16, ft_seq_len=grid)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, self.rope)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# --- transformer.py -----------------------------------------------------------------------------

class TextAttention(nn.Module):
    """transformer.Attention(xattn=True): memory_efficient_attention with LowerTriangularMask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.in_proj_weight = nn.Parameter(torch.randn(dim * 3, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(dim * 3))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, n, c = x.shape
        q, k, v = (t.contiguous().view(length, n, self.num_heads, -1).permute(1, 2, 0, 3)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        attn = ((q @ k.transpose(-1, -2)) * self.scale).masked_fill(~causal, float("-inf"))
        x = attn.softmax(dim=-1) @ v  # n, heads, L, d
        return self.out_proj(x.permute(2, 0, 1, 3).reshape(length, n, c))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = TextAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads)
                                        for _ in range(layers)])


class TextTransformer(nn.Module):
    def __init__(self, context: int, width: int, heads: int, layers: int, out: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(49408, width)
        self.positional_embedding = nn.Parameter(torch.empty(context, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, out))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class CLIP(nn.Module):
    """uta_clip.CLIP: visual, text, logit_scale."""

    def __init__(self, mlp_ratio: float = 2.6667) -> None:
        super().__init__()
        self.visual = EVAVisionTransformer(IMG, PATCH, DIM, DEPTH, HEADS, OUT, mlp_ratio)
        self.text = TextTransformer(CONTEXT, TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS, OUT)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))


# --- fixtures -------------------------------------------------------------------------------------

def _official(mlp_ratio: float = 2.6667) -> CLIP:
    torch.manual_seed(0)
    model = CLIP(mlp_ratio)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "logit_scale":
                param.fill_(math.log(50.0))
            elif param.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif param.ndim == 1:
                param.normal_(0, 0.1)
            else:
                param.normal_(0, param[0].numel() ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def official() -> CLIP:
    return _official()


@pytest.fixture(scope="module")
def checkpoint(official: CLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("official") / "uta_tiny.pt"
    torch.save(official.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def imported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "uta"
    assert main(["import-uta", str(checkpoint), "--out", str(out),
                 "--text-heads", str(TEXT_HEADS)]) == 0
    return out


def _saved(tmp_path: Path, obj: object, name: str = "broken.pt") -> Path:
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlalign: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and match in err, err


# --- tests ----------------------------------------------------------------------------------------

def test_reference_has_the_official_key_names(official: CLIP) -> None:
    """official_keys is the transcribed CLIP's state dict, rope buffers of every block included."""
    assert sorted(official.state_dict()) == sorted(official_keys(DEPTH, TEXT_LAYERS))


def test_import_matches_the_official_forward(official: CLIP, imported: Path) -> None:
    model = load_model(imported)
    assert isinstance(model, UTAModel)
    assert model.student.config.name == "eva02_base_patch14_224"
    assert (model.student.config.img_size, model.student.config.patch_size) == (IMG, PATCH)
    assert model.student.trunk.blocks[0].attn.num_heads == HEADS
    pixels = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_image = official.visual(pixels)
        expected_text = official.text(open_clip.tokenize(TEXTS))
        student = model.student(pixels)
    torch.testing.assert_close(student.cls, expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_image(pixels), expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_text(TEXTS), expected_text, atol=1e-5, rtol=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(50.0))
    assert model.has_trained_logit_scale


def test_classify_and_the_official_preprocessing(official: CLIP, imported: Path) -> None:
    """classify = softmax(100 * cosine) of the official embeddings, as imagenet_zeroshot_eval.py
    scores, on pixels prepared as it prepares them (torchvision's transform)."""
    from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from torchvision import transforms

    model = load_model(imported)
    generator = torch.Generator().manual_seed(2)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=generator) * 255).byte().numpy())
              for h, w in ((40, 56), (64, 37))]
    official_transform = transforms.Compose([
        transforms.Resize(IMG, transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(IMG), transforms.ToTensor(),
        transforms.Normalize(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)])
    pixels = torch.stack([official_transform(im) for im in images])
    torch.testing.assert_close(torch.stack([model.preprocess(im) for im in images]), pixels,
                               atol=2e-2, rtol=0)  # PIL vs torchvision rounding of uint8
    labels = ["cat", "dog", "diagram"]
    probs = model.classify(images, labels, templates=["a photo of a {c}."])
    with torch.no_grad():
        image = F.normalize(official.visual(torch.stack([model.preprocess(im) for im in images])),
                            dim=-1)
        text = F.normalize(official.text(open_clip.tokenize([f"a photo of a {c}." for c in
                                                             labels])), dim=-1)
    expected = (100 * image @ text.T).softmax(dim=-1)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=1e-4)


def test_folder_is_self_contained_and_relocatable(imported: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in imported.iterdir())
    assert names == ["student.safetensors", "text.json", "text.safetensors", "uta.json"]
    record = json.loads((imported / "uta.json").read_text())
    assert record["teacher"]["spec"] == "uta-text:."
    assert record["imported"]["file"] == "uta_tiny.pt"
    for name in ("uta.json", "text.json"):
        assert str(imported.parent) not in (imported / name).read_text()
    moved = tmp_path / "elsewhere"
    shutil.copytree(imported, moved)
    pixels = torch.randn(1, 3, IMG, IMG)
    a, b = load_model(imported), load_model(moved)
    torch.testing.assert_close(a.encode_text(TEXTS), b.encode_text(TEXTS))
    torch.testing.assert_close(a.encode_image(pixels), b.encode_image(pixels))


def test_text_tower_cannot_be_a_distillation_teacher(imported: Path) -> None:
    teacher = create_teacher(f"uta-text:{imported}")
    assert teacher.dim == OUT and teacher.preprocess.size == IMG
    with pytest.raises(UserError, match="cannot be a distillation teacher"):
        teacher.encode_image_tokens(torch.zeros(1, 3, IMG, IMG))
    with pytest.raises(UserError, match="no imported UTA text tower"):
        create_teacher(f"uta-text:{imported.parent}")


def test_text_tower_copies_to_another_model_folder(imported: Path, tmp_path: Path) -> None:
    """What a model saved elsewhere needs for its ``uta-text:.`` spec (``copy_to``)."""
    model = load_model(imported)
    model.teacher.copy_to(imported)  # its own folder: nothing to do
    model.teacher.copy_to(tmp_path / "saved")
    again = create_teacher(f"uta-text:{tmp_path / 'saved'}")
    assert again.identity == model.teacher.identity
    torch.testing.assert_close(again.encode_text(TEXTS), model.encode_text(TEXTS))


def test_wrappers_and_ddp_prefix_are_unwrapped(official: CLIP, tmp_path: Path) -> None:
    state = official.state_dict()
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    assert list(read_checkpoint(_saved(tmp_path, wrapped))) == list(state)


def test_bad_checkpoints_are_one_line_errors(official: CLIP, checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    state = official.state_dict()
    out = ["--out", str(tmp_path / "out"), "--text-heads", str(TEXT_HEADS)]
    unknown = _saved(tmp_path, {**state, "visual.mask_token": torch.zeros(1, 1, DIM)}, "u.pt")
    _one_line_error(capsys, ["import-uta", str(unknown), *out], "unknown visual.mask_token")
    missing = _saved(tmp_path, {k: v for k, v in state.items() if k != "text.ln_final.bias"},
                     "m.pt")
    _one_line_error(capsys, ["import-uta", str(missing), *out], "missing text.ln_final.bias")
    eva_clip = {**state, "visual.blocks.0.attn.inner_attn_ln.weight": torch.ones(DIM)}
    _one_line_error(capsys, ["import-uta", str(_saved(tmp_path, eva_clip, "e.pt")), *out],
                    "EVA-CLIP's layout")
    shape = _saved(tmp_path, {**state, "visual.blocks.1.mlp.w3.bias": torch.zeros(DIM + 1)},
                   "s.pt")
    _one_line_error(capsys, ["import-uta", str(shape), *out], "visual.blocks.1.mlp.w3.bias is")
    _one_line_error(capsys, ["import-uta", str(_saved(tmp_path, [1, 2, 3], "l.pt")), *out],
                    "holds a list, not a state dict")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["import-uta", str(tmp_path / "junk.pt"), *out],
                    "not a weights-only torch checkpoint")
    _one_line_error(capsys, ["import-uta", str(checkpoint), "--out", str(tmp_path / "o"),
                             "--text-heads", "3"], "--text-heads 3 does not divide")
    # timm's EVA-CLIP variant has the attention sub-LN UTA lacks (official.py's docstring)
    _one_line_error(capsys, ["import-uta", str(checkpoint), *out, "--name",
                             "eva02_base_patch16_clip_224"],
                    "does not fit timm's eva02_base_patch16_clip_224 (missing "
                    "trunk.blocks.0.attn.norm.bias")
    _one_line_error(capsys, ["import-uta", str(checkpoint), *out, "--name", "vit_base"],
                    "unknown student 'vit_base'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_a_swiglu_width_timm_does_not_give_is_built_with_an_mlp_ratio(tmp_path: Path) -> None:
    """UTA-g's case (4096 != int(1408 * 8/3)) at a small size: hidden int(64 * 3) = 192, not
    timm's 170; the student takes an MLP ratio that timm's int() turns into exactly that."""
    official = _official(mlp_ratio=3.0)
    argv = ["import-uta", str(_saved(tmp_path, official.state_dict(), "wide.pt")), "--out",
            str(tmp_path / "out"), "--text-heads", str(TEXT_HEADS)]
    assert main(argv) == 0
    pixels = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "out").encode_image(pixels),
                                   official.visual(pixels), atol=1e-5, rtol=1e-5)


def test_released_sizes_map_to_timm_configs() -> None:
    """The released visual towers: which timm model, which overrides (see official.py)."""
    base = VisualShape(patch=16, dim=768, grid=14, depth=12, heads=12, hidden=2048, out_dim=1024)
    large = VisualShape(patch=14, dim=1024, grid=24, depth=24, heads=16, hidden=2730,
                        out_dim=1024)
    giant = VisualShape(patch=14, dim=1408, grid=24, depth=40, heads=16, hidden=4096,
                        out_dim=1024)
    assert student_config(base) == ({"name": "eva02_base_patch14_224", "out_dim": 1024,
                                     "img_size": 224, "patch_size": 16, "dim": 768,
                                     "depth": 12, "heads": 12}, "UTA-B/16")
    config, release = student_config(large)
    assert (config["name"], config["img_size"], release) == ("eva02_large_patch14_224", 336,
                                                             "UTA-L/14")
    assert "mlp_ratio" not in config
    config, release = student_config(giant)
    assert release == "UTA-g/14" and int(1408 * config["mlp_ratio"]) == 4096
    assert len(RELEASES) == 3
    assert text_heads(1024) == 16 and text_heads(64, 2) == 2
    with pytest.raises(UserError, match="give its number of heads"):
        text_heads(96)
