"""UTA student: kept-token forward, independence from dropped patches, 2-D RoPE, MIM path."""

import pytest
import torch

from vlalign.uta.masking import keep_to_mask, sample_keep
from vlalign.uta.student import (
    SIZES,
    StudentConfig,
    UTAStudent,
    apply_rope,
    create_student,
    patchify,
    rope_cos_sin,
    student_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2}  # 4 x 4 grid


def _student(**overrides) -> UTAStudent:
    torch.manual_seed(0)
    return create_student("tiny", 16, **{**TINY, **overrides}).eval()


def _pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _pixel_mask(mask: torch.Tensor) -> torch.Tensor:
    """Patch mask B x 16 on the 4 x 4 grid -> pixel mask B x 1 x 32 x 32 (1 inside those)."""
    return mask.view(-1, 4, 1, 4, 1).expand(-1, 4, 8, 4, 8).reshape(-1, 1, 32, 32).float()


def test_sizes_and_overrides() -> None:
    assert SIZES["tiny"] == {"dim": 192, "depth": 12, "heads": 3}
    assert (SIZES["small"]["dim"], SIZES["base"]["heads"], SIZES["large"]["depth"]) == (384, 12, 24)
    cfg = student_config("large", 768, patch_size=14)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.patch_size, cfg.grid) == (1024, 24, 16, 14, (16, 16))
    assert StudentConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown student size"):
        student_config("huge", 16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        student_config("tiny", 16, img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        student_config("tiny", 16, dim=40, heads=4)


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
    kept_patches = patchify(x * (1 - dropped), 8).abs().sum(-1) > 0
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


def test_rope_scores_depend_on_relative_grid_offsets_only() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 16, generator=gen), torch.randn(1, 1, 2, 16, generator=gen)

    def score(p: int, r: int) -> torch.Tensor:
        cos, sin = rope_cos_sin(torch.tensor([[p, r]]), cols=6, head_dim=16, theta=100.0)
        # slot 0 of cos/sin is CLS; tokens 1, 2 sit at grid cells p and r of a 6-wide grid
        qr, kr = apply_rope(q, cos[:, 1:], sin[:, 1:]), apply_rope(k, cos[:, 1:], sin[:, 1:])
        return qr[0, 0, 0] @ kr[0, 0, 1]

    torch.testing.assert_close(score(0, 7), score(8, 15))  # both: one row down, one col right
    torch.testing.assert_close(score(2, 14), score(9, 21))  # two rows down
    assert not torch.allclose(score(0, 7), score(0, 8))
    cos, sin = rope_cos_sin(torch.tensor([[3]]), cols=6, head_dim=16, theta=100.0)
    assert torch.equal(cos[:, 0], torch.ones(1, 16)) and torch.equal(sin[:, 0], torch.zeros(1, 16))


def test_gradients_reach_every_parameter() -> None:
    model = _student().train()
    keep = sample_keep(2, (4, 4), 0.5, "reversed_block", generator=0)
    out = model(_pixels(), keep)
    (out.cls.sum() + out.tokens.square().sum()).backward()
    assert model.mask_token is None
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}


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
