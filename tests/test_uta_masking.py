"""UTA masking: exact kept counts, determinism per seed, coverage, and block clustering."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlalign.uta.masking import (
    STRATEGIES,
    gather_tokens,
    keep_to_mask,
    num_kept,
    sample_keep,
)


@given(rows=st.integers(1, 9), cols=st.integers(1, 9), ratio=st.floats(0.0, 0.95),
       strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**31))
def test_exact_count_sorted_unique(rows: int, cols: int, ratio: float, strategy: str,
                                   seed: int) -> None:
    n = rows * cols
    if round((1 - ratio) * n) < 1:
        with pytest.raises(ValueError, match="keeps no patch"):
            sample_keep(2, (rows, cols), ratio, strategy, generator=seed)
        return
    keep = sample_keep(3, (rows, cols), ratio, strategy, generator=seed)
    assert keep.dtype == torch.long and keep.shape == (3, round((1 - ratio) * n))
    assert (keep[:, 1:] > keep[:, :-1]).all()  # sorted, hence unique
    assert keep.min() >= 0 and keep.max() < n


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9])
def test_kept_count_on_paper_grid(strategy: str, ratio: float) -> None:
    keep = sample_keep(4, (14, 14), ratio, strategy, generator=0)
    assert keep.shape == (4, num_kept(196, ratio)) == (4, round((1 - ratio) * 196))
    if ratio == 0.0:
        assert torch.equal(keep, torch.arange(196).expand(4, 196))


def test_num_kept_rounds_and_validates() -> None:
    assert num_kept(196, 0.5) == 98 and num_kept(49, 0.5) == 24 and num_kept(10, 0.25) == 8
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            num_kept(16, bad)
    with pytest.raises(ValueError, match="unknown masking strategy"):
        sample_keep(1, (4, 4), strategy="grid")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic_per_seed_and_seeds_differ(strategy: str) -> None:
    a = sample_keep(4, (8, 8), 0.5, strategy, generator=7)
    torch.testing.assert_close(sample_keep(4, (8, 8), 0.5, strategy, generator=7), a)
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(sample_keep(4, (8, 8), 0.5, strategy, generator=gen), a)
    assert not torch.equal(sample_keep(4, (8, 8), 0.5, strategy, generator=gen), a)  # advanced
    assert not torch.equal(sample_keep(4, (8, 8), 0.5, strategy, generator=8), a)
    assert not torch.equal(a[0], a[1])  # images of one batch get different masks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_position_is_kept_sometimes(strategy: str) -> None:
    keep = sample_keep(400, (6, 6), 0.75, strategy, generator=0)
    counts = torch.bincount(keep.flatten(), minlength=36)
    assert (counts > 0).all()


def _kept_neighbours(keep: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean number of kept 4-neighbours of a kept patch."""
    kept = (~keep_to_mask(keep, grid[0] * grid[1])).view(-1, *grid).float()
    padded = torch.nn.functional.pad(kept, (1, 1, 1, 1))
    around = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return float((around * kept).sum() / kept.sum())


def test_block_strategies_cluster_kept_patches() -> None:
    grid = (14, 14)
    score = {s: _kept_neighbours(sample_keep(64, grid, 0.5, s, generator=0), grid)
             for s in STRATEGIES}
    assert score["random"] < 2.0  # about 4 * 0.5 * (interior share)
    assert score["block"] > score["random"] + 0.8
    assert score["reversed_block"] > score["random"] + 0.8


def _keep_rates(strategy: str, ratio: float, **options: int) -> torch.Tensor:
    keep = sample_keep(400, (14, 14), ratio, strategy, generator=0, **options)
    return torch.bincount(keep.flatten(), minlength=196).float() / 400


def test_reversed_block_keeps_every_position_about_equally_often() -> None:
    """Reversed blocks may overhang the border, so corners are kept about as often as the
    centre; BEiT-placed blocks (which must fit inside the grid) would starve the border."""
    for ratio in (0.5, 0.75):
        rates = _keep_rates("reversed_block", ratio)
        assert rates.min() > 0.6 * (1 - ratio) and rates.max() < 1.4 * (1 - ratio)
    block = _keep_rates("block", 0.5).view(14, 14)  # BEiT: masked blocks sit mid-image
    assert block[0, 0] > 1.5 * block[7, 7]


def test_reversed_block_size_cap() -> None:
    """Default reversed blocks are capped at 2 x min_block: more, smaller kept groups (fewer
    kept neighbours) than with unbounded blocks, yet clustered."""
    grid = (14, 14)
    capped = _kept_neighbours(sample_keep(64, grid, 0.75, "reversed_block", generator=0), grid)
    unbounded = _kept_neighbours(
        sample_keep(64, grid, 0.75, "reversed_block", generator=0, max_block=196), grid)
    scattered = _kept_neighbours(sample_keep(64, grid, 0.75, "random", generator=0), grid)
    assert scattered + 1.0 < capped < unbounded
    with pytest.raises(ValueError, match="smaller than min_block"):
        sample_keep(1, grid, 0.5, "block", min_block=8, max_block=4)


def test_mask_and_gather_helpers() -> None:
    keep = torch.tensor([[0, 2], [1, 3]])
    assert keep_to_mask(keep, 4).tolist() == [[False, True, False, True], [True, False, True,
                                                                          False]]
    tokens = torch.arange(2 * 4 * 3).view(2, 4, 3)
    gathered = gather_tokens(tokens, keep)
    assert torch.equal(gathered[0], tokens[0, [0, 2]]) and torch.equal(gathered[1],
                                                                         tokens[1, [1, 3]])
