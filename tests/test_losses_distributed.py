"""Two gloo processes on CPU give the loss and gradients of one process on the whole batch."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlalign.sail.heads import create_head
from vlalign.sail.losses import create_loss
from vlalign.utils.distributed import all_reduce_sum, world_info

WORLD_SIZE, GLOBAL_BATCH, IMAGE_DIM, TEXT_DIM, EMBED_DIM = 2, 24, 12, 8, 6
CASES = {  # name -> create_loss arguments; block 5 leaves an uneven last block
    "sigmoid": {"name": "sigmoid"},
    "sigmoid-blocked": {"name": "sigmoid", "block_size": 5},
    "siglip-blocked": {"name": "siglip", "block_size": 5},
    "infonce": {"name": "infonce"},
    "infonce-blocked": {"name": "infonce", "block_size": 5},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _run_case(options: dict) -> dict[str, torch.Tensor]:
    """One training step's loss and gradients on this rank's share of a seeded global batch."""
    rank, world_size = world_info()
    torch.manual_seed(0)  # same head init on every rank
    vision = create_head("glu", IMAGE_DIM, EMBED_DIM, width_factor=2)
    text = create_head("glu", TEXT_DIM, EMBED_DIM, width_factor=2)
    loss_fn = create_loss(**options, rank=rank, world_size=world_size)
    with torch.no_grad():  # away from the presets, so every gradient is non-trivial
        loss_fn.log_scale.fill_(1.5)
    gen = torch.Generator().manual_seed(1)
    features = [torch.randn(GLOBAL_BATCH, dim, generator=gen)
                for dim in (IMAGE_DIM, TEXT_DIM, TEXT_DIM)]  # images, raw, rewritten captions
    local = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    image, raw, rewritten = (f[local].clone().requires_grad_() for f in features)
    loss, terms = loss_fn(F.normalize(vision(image), dim=-1),
                          {"raw": F.normalize(text(raw), dim=-1),
                           "rewritten": F.normalize(text(rewritten), dim=-1)})
    loss.backward()
    params = {f"vision.{k}": p for k, p in vision.named_parameters()}
    params |= {f"text.{k}": p for k, p in text.named_parameters()}
    params |= {f"loss.{k}": p for k, p in loss_fn.named_parameters()}
    for param in params.values() if world_size > 1 else ():  # the contract: sum over ranks
        dist.all_reduce(param.grad)
    out = {"loss": all_reduce_sum(loss), **{k: all_reduce_sum(v) for k, v in terms.items()}}
    out |= {f"grad.{k}": p.grad for k, p in params.items()}
    out |= {"grad.input.image": image.grad, "grad.input.raw": raw.grad,
            "grad.input.rewritten": rewritten.grad}  # local rows only
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    try:
        results = {case: _run_case(options) for case, options in CASES.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Per-rank results of all cases from one 2-process gloo run."""
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def _assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Max abs error within rtol of the expected tensor's max magnitude (norm-wise relative)."""
    err = (actual - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item() + 1e-9, (err, expected.abs().max().item())


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_match_one_process(case: str,
                                     ranks: list[dict[str, dict[str, torch.Tensor]]]) -> None:
    single = _run_case(CASES[case])
    per_rank = [r[case] for r in ranks]
    assert set(per_rank[0]) == set(single)
    for key, expected in single.items():
        assert expected.abs().max() > 0, key  # every checked quantity is non-trivial
        if key.startswith("grad.input."):  # each rank holds the gradient of its own rows
            actual = torch.cat([r[key] for r in per_rank])
        else:  # reduced over ranks: identical on every rank
            actual = per_rank[0][key]
            torch.testing.assert_close(per_rank[1][key], actual, rtol=0, atol=0)
        _assert_rel(actual, expected)
