"""Which patches the student sees: random, block-wise and reversed block-wise masking.

Every strategy keeps exactly ``num_kept(N, ratio)`` of the N = rows * cols patches of each image
and returns their indices (row-major over the grid) sorted ascending, so the student's token order
is the image's raster order. All randomness comes from one ``torch.Generator`` (or a seed), so a
(seed, step) pair reproduces a batch's masks exactly, e.g. after a resume.

Block-wise (BEiT style): masked patches are grown as axis-aligned rectangles until exactly
M = N - K patches are masked. Each rectangle has an area drawn uniformly from
[min(min_block, left), min(max_block, left)] (``left`` = patches still to mask) and an aspect
ratio drawn log-uniformly from [0.3, 1/0.3]; its sides are rounded and clipped to the grid and its
top-left corner is uniform over the positions where it fits. Only patches not yet masked count;
when a rectangle would overshoot, only its ``left`` free patches nearest to its centre are taken
(ties in raster order), which makes the count exact while keeping the region clustered.
``min_block`` defaults to BEiT's 16 patches of a 14 x 14 grid scaled to the grid (at least 1);
``max_block`` defaults to unbounded, as in BEiT and EVA-02.

Reversed block-wise: the same procedure selects K patches as blocks, and those blocks are the
patches KEPT (a block-wise mask of ratio 1 - ratio, inverted), with two changes that spread the
visible tokens over the image (UTA's reason for the variant: spatial coverage): ``max_block``
defaults to 2 * ``min_block`` (16 to 32 patches on a 14 x 14 grid), so the visible part is several
compact groups rather than one or two large chunks; and a rectangle's top-left corner is uniform
over every position where it overlaps the grid (it may hang over the border and is clipped), so
every patch is about equally likely to be kept. With BEiT's placement, border patches would be
kept far less often than central ones (at ratio 0.5 on 14 x 14: corners about 7%, centre 77%).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

STRATEGIES = ("random", "block", "reversed_block")
BEIT_MIN_BLOCK_FRACTION = 16 / 196  # BEiT: blocks of at least 16 patches on a 14 x 14 grid
ASPECT_RANGE = (0.3, 1 / 0.3)


def num_kept(num_patches: int, ratio: float) -> int:
    """Patches kept at mask ``ratio``: Python's ``round((1 - ratio) * N)`` (halves go to even)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    kept = round((1.0 - ratio) * num_patches)
    if kept < 1:
        raise ValueError(f"mask ratio {ratio} keeps no patch of {num_patches}")
    return kept


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """An int seeds a fresh generator, so a seed alone reproduces the masks."""
    return torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator


def _grow_blocks(grid: tuple[int, int], count: int, rng: random.Random, min_block: int,
                 max_block: int, overhang: bool) -> list[int]:
    """Exactly ``count`` distinct cells of the grid, chosen as clustered rectangles; with
    ``overhang`` a rectangle may lie partly outside the grid (only its inside counts)."""
    rows, cols = grid
    chosen = [False] * (rows * cols)
    taken = 0
    log_lo, log_hi = (math.log(a) for a in ASPECT_RANGE)
    while taken < count:
        left = count - taken
        area = rng.uniform(min(min_block, left), min(max_block, left))
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        height = min(max(round(math.sqrt(area * aspect)), 1), rows)
        width = min(max(round(math.sqrt(area / aspect)), 1), cols)
        if overhang:
            top, lft = rng.randint(1 - height, rows - 1), rng.randint(1 - width, cols - 1)
        else:
            top, lft = rng.randint(0, rows - height), rng.randint(0, cols - width)
        free = [r * cols + c for r in range(max(top, 0), min(top + height, rows))
                for c in range(max(lft, 0), min(lft + width, cols)) if not chosen[r * cols + c]]
        if len(free) > left:
            centre_r, centre_c = top + (height - 1) / 2, lft + (width - 1) / 2
            free.sort(key=lambda i: (i // cols - centre_r) ** 2 + (i % cols - centre_c) ** 2)
            free = free[:left]
        for i in free:
            chosen[i] = True
        taken += len(free)
    return [i for i, c in enumerate(chosen) if c]


def sample_keep(batch: int, grid: tuple[int, int], ratio: float = 0.5, strategy: str = "random",
                generator: torch.Generator | int | None = None,
                min_block: int | None = None, max_block: int | None = None) -> torch.Tensor:
    """Sorted indices of the KEPT patches, LongTensor B x K (see the module doc for strategies).

    ``generator``: a torch.Generator (advanced by the call), an int seed, or None for torch's
    global RNG. ``min_block`` / ``max_block`` override the block strategies' smallest and
    largest block areas (in patches).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    n = grid[0] * grid[1]
    kept = num_kept(n, ratio)
    if kept == n:
        return torch.arange(n).expand(batch, n).clone()
    gen = _as_generator(generator)
    if strategy == "random":
        order = torch.rand(batch, n, generator=gen).argsort(dim=1)
        return order[:, :kept].sort(dim=1).values
    smallest = min_block or max(1, round(BEIT_MIN_BLOCK_FRACTION * n))
    largest = max_block or (2 * smallest if strategy == "reversed_block" else n)
    if largest < smallest:
        raise ValueError(f"max_block {largest} is smaller than min_block {smallest}")
    seeds = torch.randint(0, 2**62, (batch,), generator=gen).tolist()
    rows = []
    for seed in seeds:
        rng = random.Random(seed)
        if strategy == "block":
            masked = set(_grow_blocks(grid, n - kept, rng, smallest, largest, overhang=False))
            rows.append([i for i in range(n) if i not in masked])
        else:
            rows.append(_grow_blocks(grid, kept, rng, smallest, largest, overhang=True))
    return torch.tensor(rows, dtype=torch.long).view(batch, kept)


def keep_for_positions(seed: int, step: int, positions: Sequence[int], grid: tuple[int, int],
                       ratio: float, strategy: str) -> torch.Tensor:
    """Kept indices (len(positions) x K) for rows at these positions of global batch ``step``.

    Each row's mask comes from its own generator, seeded by (seed, step, position): a rank, or a
    loader worker, draws just its rows, and row p's mask is the same for any number of ranks.
    """
    rows = []
    for position in positions:
        row_seed = int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])
        rows.append(sample_keep(1, grid, ratio, strategy, generator=row_seed)[0])
    return torch.stack(rows) if rows else torch.zeros(0, num_kept(grid[0] * grid[1], ratio),
                                                        dtype=torch.long)


def keep_to_mask(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Kept indices B x K -> boolean B x N mask, True where a patch is MASKED (dropped)."""
    mask = torch.ones(keep.shape[0], num_patches, dtype=torch.bool, device=keep.device)
    return mask.scatter(1, keep, False)


def gather_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-position tensors B x N x D -> the kept positions B x K x D, in ``keep``'s order."""
    return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
