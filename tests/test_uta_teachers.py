"""UTA teachers: tiny random open_clip (ViT and EVA-02 towers), transformers CLIP and SAIL
models loaded by path, checked against the models' own outputs; token-grid resampling."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tiny_models import save_sail_teacher
from vlalign.errors import UserError
from vlalign.uta.loss import uta_loss
from vlalign.uta.masking import sample_keep
from vlalign.uta.student import create_student
from vlalign.uta.teachers import (
    Teacher,
    TeacherOutput,
    create_teacher,
    match_teacher_grid,
    resample_tokens,
)

STUDENT = "eva02_tiny_patch14_224"  # timm EVA-02-Ti, shrunk by the overrides
pytestmark = pytest.mark.usefixtures("one_thread")
TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
OPEN_CLIP = {
    "vit": {"embed_dim": 16, "text_cfg": TEXT_CFG, "vision_cfg": {
        "image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}},
    "eva": {"embed_dim": 16, "text_cfg": TEXT_CFG, "vision_cfg": {  # EVA-02-CLIP's tower type
        "image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
        "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None}},
    "attn_pool": {"embed_dim": 16, "text_cfg": TEXT_CFG, "vision_cfg": {
        "image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
        "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}},
}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog"]


def _pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def open_clip_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random open_clip models saved as local-dir folders (config + weights)."""
    import open_clip

    root = tmp_path_factory.mktemp("uta_open_clip")
    for name, cfg in OPEN_CLIP.items():
        torch.manual_seed(0)
        (root / name).mkdir()
        (root / name / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        torch.save(open_clip.model.CLIP(**cfg).state_dict(),
                   root / name / "open_clip_pytorch_model.bin")
    return {name: root / name for name in OPEN_CLIP}


def test_resample_identity_constant_and_average() -> None:
    tokens = torch.randn(2, 16, 5)
    assert resample_tokens(tokens, (4, 4), (4, 4)) is tokens
    constant = torch.full((2, 12, 5), 0.7)
    for target in ((2, 3), (8, 8), (5, 7), (1, 1)):
        out = resample_tokens(constant, (3, 4), target)
        assert out.shape == (2, target[0] * target[1], 5)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))
    halved = resample_tokens(tokens, (4, 4), (2, 2))  # 2x shrink: mean of each 2 x 2 block
    field = tokens.transpose(1, 2).reshape(2, 5, 4, 4)
    torch.testing.assert_close(halved, F.avg_pool2d(field, 2).flatten(2).transpose(1, 2))
    out = TeacherOutput(tokens, torch.randn(2, 5), (4, 4)).to_grid((2, 2))
    assert out.grid == (2, 2) and out.tokens.shape == (2, 4, 5)
    with pytest.raises(ValueError, match="do not fill"):
        resample_tokens(tokens, (3, 3), (2, 2))


def test_open_clip_vit_teacher(open_clip_dirs: dict[str, Path]) -> None:
    import open_clip

    teacher = create_teacher(f"open_clip:{open_clip_dirs['vit']}")
    assert isinstance(teacher, Teacher)
    assert teacher.dim == 16 and teacher.preprocess.size == 32
    x = _pixels(32)
    out = teacher.encode_image_tokens(x)
    assert out.grid == (4, 4) and out.tokens.shape == (2, 16, 16) and out.pooled.shape == (2, 16)
    assert not out.tokens.requires_grad and not out.tokens.is_inference()
    model = open_clip.create_model(f"local-dir:{open_clip_dirs['vit']}").eval()
    with torch.no_grad():
        torch.testing.assert_close(out.pooled, model.encode_image(x))
        model.visual.output_tokens = True
        _, patches = model.visual(x)  # patch tokens after ln_post, before proj
        torch.testing.assert_close(out.tokens, patches @ model.visual.proj)
        ids = open_clip.get_tokenizer(f"local-dir:{open_clip_dirs['vit']}")(["a cat", "a dog"])
        torch.testing.assert_close(teacher.encode_text(["a cat", "a dog"]),
                                   model.encode_text(ids))
    assert teacher.encode_text([]).shape == (0, 16)


def test_open_clip_eva_tower_teacher(open_clip_dirs: dict[str, Path]) -> None:
    import open_clip

    teacher = create_teacher(f"open_clip:{open_clip_dirs['eva']}")
    x = _pixels(224, n=1)
    out = teacher.encode_image_tokens(x)
    assert out.grid == (16, 16) and out.tokens.shape == (1, 256, 16)
    model = open_clip.create_model(f"local-dir:{open_clip_dirs['eva']}").eval()
    visual = model.visual
    with torch.no_grad():
        features = visual.trunk.forward_features(x)  # B x (1 + N) x width, final norm applied

        def project(t: torch.Tensor) -> torch.Tensor:
            return visual.head(visual.trunk.head(visual.trunk.fc_norm(t)))

        torch.testing.assert_close(out.tokens, project(features[:, 1:]))
        torch.testing.assert_close(out.pooled, model.encode_image(x))
        torch.testing.assert_close(out.pooled, project(features[:, 0]))  # CLS: the same map


def test_eva_teacher_runs_on_the_students_grid(open_clip_dirs: dict[str, Path]) -> None:
    """A B/16 student at 224 px has a 14 x 14 grid; the /14 EVA tower then runs at 196 px
    (positions and RoPE resampled by timm) instead of its 16 x 16 tokens being resampled."""
    teacher = create_teacher(f"open_clip:{open_clip_dirs['eva']}")
    assert match_teacher_grid(teacher, (14, 14)) == (14, 14)
    assert teacher.preprocess.size == 196
    out = teacher.encode_image_tokens(_pixels(196, n=1))
    assert out.grid == (14, 14) and out.tokens.shape == (1, 196, 16)
    vit = create_teacher(f"open_clip:{open_clip_dirs['vit']}")  # a ViT tower keeps its grid
    own = vit.encode_image_tokens(_pixels(vit.preprocess.size, n=1)).grid
    assert match_teacher_grid(vit, (3, 3)) == own != (3, 3)


def test_attention_pooled_towers_are_refused(open_clip_dirs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="cannot be a UTA teacher"):
        create_teacher(f"open_clip:{open_clip_dirs['attn_pool']}")


def test_hf_clip_teacher(tmp_path: Path) -> None:
    from transformers import BertTokenizer, CLIPConfig, CLIPModel

    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
    text = dict(small, vocab_size=len(WORDS), max_position_embeddings=16, eos_token_id=3,
                bos_token_id=2, pad_token_id=0)
    config = CLIPConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=8),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    tokenizer.save_pretrained(tmp_path / "clip")
    teacher = create_teacher(f"hf:{tmp_path / 'clip'}")
    assert isinstance(teacher, Teacher) and teacher.dim == 16 and teacher.preprocess.size == 32
    x = _pixels(32)
    out = teacher.encode_image_tokens(x)
    assert out.grid == (4, 4) and out.tokens.shape == (2, 16, 16)
    model = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():
        vision = model.vision_model(pixel_values=x)
        patches = vision.last_hidden_state[:, 1:]
        expected = model.visual_projection(model.vision_model.post_layernorm(patches))
        torch.testing.assert_close(out.tokens, expected)
        torch.testing.assert_close(out.pooled, model.visual_projection(vision.pooler_output))
        ids = tokenizer(["a cat", "dog"], padding=True, return_tensors="pt")
        text_embeds = model.text_projection(model.text_model(**ids).pooler_output)
        torch.testing.assert_close(teacher.encode_text(["a cat", "dog"]), text_embeds)


@pytest.fixture(scope="module")
def sail_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sail_teacher(tmp_path_factory.mktemp("uta_sail") / "model")


def test_sail_teacher_matches_the_model_and_trains_a_student(sail_dir: Path) -> None:
    from vlalign.models import load_model

    teacher = create_teacher(f"sail:{sail_dir}")
    assert isinstance(teacher, Teacher) and teacher.dim == 16 and teacher.preprocess.size == 64
    assert teacher.identity == create_teacher(f"sail:{sail_dir}").identity
    model = load_model(sail_dir)
    x = _pixels(64)
    out = teacher.encode_image_tokens(x)
    tokens, grid = model.encode_image_tokens(x, normalize=False)
    assert out.grid == grid == (2, 2)
    torch.testing.assert_close(out.tokens, tokens)
    torch.testing.assert_close(out.pooled, model.encode_image(x, normalize=False))
    torch.testing.assert_close(teacher.encode_text(["a red cat"]),
                               model.encode_text(["a red cat"], normalize=False))
    # The targets feed a UTA step on a student with a finer grid (resampled 2 x 2 -> 4 x 4).
    student = create_student(STUDENT, 16, img_size=64, patch_size=16, dim=32, depth=1, heads=2)
    targets = out.to_grid(student.config.grid)
    keep = sample_keep(2, student.config.grid, 0.5, "block", generator=0)
    pred = student(x, keep)
    loss = uta_loss(pred.cls, pred.tokens, targets.pooled, targets.tokens, keep).total
    loss.backward()  # teacher outputs are ordinary tensors: usable as autograd targets
    assert student.head.weight.grad is not None


def test_unknown_teacher_scheme() -> None:
    with pytest.raises(UserError, match="open_clip, hf, sail"):
        create_teacher("timm:vit_base_patch16_224")
    with pytest.raises(UserError, match="take no options"):
        create_teacher("sail:/nowhere?x=1")
