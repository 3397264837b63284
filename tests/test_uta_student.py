"""UTA student: timm's EVA-02 with vlalign's kept-token forward; independence from dropped
patches, positions travelling with tokens, MIM path, equality with timm's own forwards."""

import pytest
import torch
from timm.models.eva import Eva

from vlalign.uta.masking import keep_to_mask, sample_keep
from vlalign.uta.student import StudentConfig, UTAStudent, create_student, student_names

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "eva02_tiny_patch14_224"
TINY = {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2}  # 4 x 4 grid


def _student(name: str = NAME, **overrides) -> UTAStudent:
    torch.manual_seed(0)
    return create_student(name, 16, **{**TINY, **overrides}).eval()


def _pixels(n: int = 2, seed: int = 0, side: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _pixel_mask(mask: torch.Tensor) -> torch.Tensor:
    """Patch mask B x 16 on the 4 x 4 grid -> pixel mask B x 1 x 32 x 32 (1 inside those)."""
    return mask.view(-1, 4, 1, 4, 1).expand(-1, 4, 8, 4, 8).reshape(-1, 1, 32, 32).float()


def _patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), -1)


def test_every_timm_eva02_is_available_and_resolved() -> None:
    names = student_names()
    assert {"eva02_tiny_patch14_224", "eva02_base_patch16_clip_224",
            "eva02_large_patch14_clip_336", "eva_giant_patch14_clip_224"} <= set(names)
    model = create_student("eva02_base_patch16_clip_224", 8, img_size=32, dim=32, heads=2,
                           depth=1)
    assert isinstance(model.trunk, Eva)
    cfg = model.config  # zeros resolved to what timm built
    assert (cfg.img_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.grid) == (
        32, 16, 32, 1, 2, (2, 2))
    assert UTAStudent(StudentConfig(**cfg.to_dict())).config == cfg
    # the CLIP variant keeps EVA-02-CLIP's details: sub-LN in SwiGLU, separate q/k/v, no k bias
    attn, mlp = model.trunk.blocks[0].attn, model.trunk.blocks[0].mlp
    assert attn.q_proj.bias is not None and attn.k_proj.bias is None
    assert isinstance(mlp.norm, torch.nn.LayerNorm) and mlp.norm.eps == 1e-6
    with pytest.raises(ValueError, match="unknown student 'vit_huge'"):
        create_student("vit_huge", 16)
    with pytest.raises(ValueError, match="student eva02_tiny_patch14_224 with"):
        create_student(NAME, 16, img_size=32, patch_size=8, dim=30, heads=4, depth=1)


@pytest.mark.parametrize("name", [NAME, "eva02_base_patch16_clip_224"])
def test_all_patches_kept_equals_timm_forward_features(name: str) -> None:
    model = _student(name)
    x = _pixels()
    timm_tokens = model.trunk.forward_features(x)
    assert torch.equal(model.forward_tokens(x), timm_tokens)
    every = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(model.forward_tokens(x, every), timm_tokens)


def test_kept_tokens_equal_timms_patch_dropout_path() -> None:
    """timm's own patch-dropout branch (gather tokens, gather RoPE at the kept indices) with the
    same indices gives the kept-token forward's hidden states."""
    model = _student()
    keep = sample_keep(2, (4, 4), 0.5, "random", generator=3).sort(dim=1).values

    class FixedDrop(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            patches = x[:, 1:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
            return torch.cat([x[:, :1], patches], dim=1), keep

    model.trunk.patch_drop = FixedDrop()
    x = _pixels()
    torch.testing.assert_close(model.forward_tokens(x, keep), model.trunk.forward_features(x))


def test_resolution_change_drop_path_and_checkpointing() -> None:
    model = _student()
    model.set_input_size(48)
    assert model.config.grid == (6, 6) and model.forward_tokens(_pixels(side=48)).shape == (
        2, 37, 32)
    torch.testing.assert_close(model.forward_tokens(_pixels(side=48)),
                               model.trunk.forward_features(_pixels(side=48)))
    model.set_drop_path(0.2)
    rates = [block.drop_path2.drop_prob if hasattr(block.drop_path2, "drop_prob") else 0.0
             for block in model.trunk.blocks]
    assert rates == [0.0, 0.2] and model.config.drop_path == 0.2
    model.eval()  # drop path is off in eval: the output is unchanged
    torch.testing.assert_close(model.forward_tokens(_pixels(side=48)),
                               model.trunk.forward_features(_pixels(side=48)))
    plain, checkpointed = _student().train(), _student().train()
    checkpointed.set_grad_checkpointing()
    keep = sample_keep(2, (4, 4), 0.5, "random", generator=0)
    for net in (plain, checkpointed):
        net(_pixels(), keep).cls.sum().backward()
    torch.testing.assert_close(checkpointed.head.weight.grad, plain.head.weight.grad)


def test_all_kept_equals_no_keep_and_shapes() -> None:
    model = _student()
    x = _pixels()
    full = model(x)
    assert full.cls.shape == (2, 16) and full.tokens.shape == (2, 16, 16)
    every = model(x, torch.arange(16).expand(2, 16))
    torch.testing.assert_close(every.cls, full.cls)
    torch.testing.assert_close(every.tokens, full.tokens)
    assert model.forward_features(x).shape == (2, 32)


def test_runs_only_kept_tokens_plus_cls() -> None:
    model = _student()
    keep = sample_keep(2, (4, 4), 0.75, "random", generator=0)
    assert model.forward_tokens(_pixels(), keep).shape == (2, 4 + 1, 32)
    out = model(_pixels(), keep)
    assert out.tokens.shape == (2, 4, 16) and out.cls.shape == (2, 16)


def test_dropped_patches_do_not_matter_kept_ones_do() -> None:
    model = _student()
    x = _pixels()
    keep = sample_keep(2, (4, 4), 0.5, "block", generator=1)
    dropped = _pixel_mask(keep_to_mask(keep, 16))
    kept_patches = _patchify(x * (1 - dropped), 8).abs().sum(-1) > 0
    assert torch.equal(kept_patches, ~keep_to_mask(keep, 16))  # the mask covers dropped patches
    noisy = x + 5 * dropped * torch.randn_like(x)
    a, b = model(x, keep), model(noisy, keep)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    torch.testing.assert_close(a.cls, b.cls, rtol=0, atol=0)
    kept_changed = x + 5 * (1 - dropped) * torch.randn_like(x)
    assert not torch.allclose(model(kept_changed, keep).tokens, a.tokens)


def test_positions_travel_with_tokens() -> None:
    """Shuffling the kept indices shuffles the outputs the same way: absolute positions and
    RoPE are taken at each token's grid position, not at its slot in the sequence."""
    model = _student()
    x = _pixels()
    keep = sample_keep(2, (4, 4), 0.5, "random", generator=2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    a, b = model(x, keep), model(x, keep[:, perm])
    torch.testing.assert_close(b.tokens, a.tokens[:, perm])
    torch.testing.assert_close(b.cls, a.cls)
    other = model(x, keep.flip(0))  # other positions, same slots: different outputs
    assert not torch.allclose(other.tokens, a.tokens)


def test_gradients_reach_every_parameter() -> None:
    model = _student().train()
    keep = sample_keep(2, (4, 4), 0.5, "reversed_block", generator=0)
    out = model(_pixels(), keep)
    (out.cls.sum() + out.tokens.square().sum()).backward()
    assert model.mask_token is None
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert model.no_weight_decay() == {"trunk.cls_token", "trunk.pos_embed"}


def test_forward_masked_for_the_mim_baseline() -> None:
    model = _student(mask_token=True)
    x = _pixels()
    nothing = torch.zeros(2, 16, dtype=torch.bool)
    torch.testing.assert_close(model.forward_masked(x, nothing).tokens, model(x).tokens)
    mask = keep_to_mask(sample_keep(2, (4, 4), 0.5, "block", generator=0), 16)
    a = model.forward_masked(x, mask)
    assert a.tokens.shape == (2, 16, 16)
    noisy = x + 3 * _pixel_mask(mask) * torch.randn_like(x)  # only masked patches change
    torch.testing.assert_close(model.forward_masked(noisy, mask).tokens, a.tokens, rtol=0, atol=0)
    a.tokens.sum().backward()
    assert "mask_token" in model.no_weight_decay()
    assert model.mask_token.grad is not None and model.mask_token.grad.any()
    with pytest.raises(ValueError, match="no mask token"):
        _student().forward_masked(x, mask)


def test_input_size_is_checked_and_bf16_autocast_runs() -> None:
    model = _student()
    with pytest.raises(ValueError, match="32 x 32"):
        model(torch.zeros(1, 3, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_pixels(), sample_keep(2, (4, 4), 0.5, generator=0))
    assert torch.isfinite(out.tokens.float()).all()
