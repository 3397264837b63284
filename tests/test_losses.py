"""Contrastive losses: blocked path vs plain reference (values, gradients), memory, presets."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vlalign.errors import UserError
from vlalign.sail.losses import (
    CPU_TILE_ELEMENTS,
    LOSSES,
    InfoNCELoss,
    SigmoidLoss,
    _softplus_sum,
    create_loss,
    infonce_loss_reference,
    sigmoid_loss_reference,
)

DIM = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _embeddings(n: int, positives: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Seeded L2-normalised leaf embeddings: images (n x d) and `positives` text matrices."""
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, DIM, generator=gen), dim=1).requires_grad_()
    texts = [F.normalize(torch.randn(n, DIM, generator=gen), dim=1).requires_grad_()
             for _ in range(positives)]
    return image, texts


def _reference(loss_fn: SigmoidLoss | InfoNCELoss, image: torch.Tensor,
               texts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean of the plain full-matrix losses, and its gradients (image, texts, log_scale, bias)."""
    params = [p.detach().clone().requires_grad_() for p in loss_fn.parameters()]
    if isinstance(loss_fn, SigmoidLoss):
        log_scale, bias = params
        scale = log_scale.exp()
        losses = [sigmoid_loss_reference(image, t, scale, bias, loss_fn.normalize) for t in texts]
    else:
        scale = params[0].exp()
        losses = [infonce_loss_reference(image, t, scale) for t in texts]
    value = torch.stack(losses).mean()
    return value, list(torch.autograd.grad(value, [image, *texts, *params]))


def _blocked(loss_fn: SigmoidLoss | InfoNCELoss, image: torch.Tensor,
             texts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    value, _ = loss_fn(image, texts[0] if len(texts) == 1 else texts)
    return value, list(torch.autograd.grad(value, [image, *texts, *loss_fn.parameters()]))


def _assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Max abs error within rtol of the expected tensor's max magnitude (norm-wise relative)."""
    err = (actual - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item() + 1e-9, (err, expected.abs().max().item())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("positives", [1, 2])
@pytest.mark.parametrize("block_size", [1, 16, 64, 300, None])
@pytest.mark.parametrize("n", [1, 7, 64, 257])
def test_blocked_matches_reference(name: str, positives: int, block_size: int | None,
                                   n: int) -> None:
    loss_fn = create_loss(name, block_size=block_size)
    image, texts = _embeddings(n, positives, seed=n)
    value, grads = _blocked(loss_fn, image, texts)
    ref_value, ref_grads = _reference(loss_fn, image, texts)
    _assert_rel(value, ref_value)
    assert len(grads) == len(ref_grads)
    for grad, ref_grad in zip(grads, ref_grads):
        _assert_rel(grad, ref_grad)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_named_terms(name: str) -> None:
    loss_fn = create_loss(name, block_size=5)
    image, (raw, rewritten) = _embeddings(11, 2, seed=0)
    total, terms = loss_fn(image, {"raw": raw, "rewritten": rewritten})
    assert set(terms) == {"loss/raw", "loss/rewritten"}
    assert not any(t.requires_grad for t in terms.values())
    torch.testing.assert_close(terms["loss/raw"], loss_fn(image, raw)[0].detach())
    torch.testing.assert_close(total.detach(), (terms["loss/raw"] + terms["loss/rewritten"]) / 2)
    _, indexed = loss_fn(image, [raw, rewritten])
    assert set(indexed) == {"loss/0", "loss/1"}
    assert loss_fn(image, raw)[1] == {}


@pytest.mark.parametrize(("log_scale", "expected"), [(math.log(1000.0), 100.0),
                                                     (math.log(0.1), 1.0)])
def test_sigmoid_scale_is_clamped_after_the_step_not_in_the_forward(log_scale: float,
                                                                    expected: float) -> None:
    """Outside the bounds the scale keeps its gradient (so Lion's update follows the loss), and
    ``clamp_scale_`` (the trainer's after-step hook) brings the parameter back, as the official
    trainer's ``logit_scale.clamp_(0, log 100)`` does."""
    loss_fn = SigmoidLoss.sail(block_size=4)
    with torch.no_grad():
        loss_fn.log_scale.fill_(log_scale)
    image, texts = _embeddings(9, 1, seed=1)
    value, grads = _blocked(loss_fn, image, texts)
    ref_value, ref_grads = _reference(loss_fn, image, texts)
    _assert_rel(value, ref_value)
    assert grads[2].item() != 0.0
    _assert_rel(grads[2], ref_grads[2])
    loss_fn.clamp_scale_()
    assert loss_fn.scale.item() == pytest.approx(expected)


def test_infonce_scale_clamp_and_siglip_unclamped() -> None:
    infonce, siglip = InfoNCELoss(), SigmoidLoss.siglip()
    with torch.no_grad():
        infonce.log_scale.fill_(math.log(1000.0))
        siglip.log_scale.fill_(math.log(1000.0))
    infonce.clamp_scale_()
    siglip.clamp_scale_()
    assert infonce.scale.item() == pytest.approx(100.0)
    assert siglip.scale.item() == pytest.approx(1000.0)


def test_presets() -> None:
    sail, siglip, infonce = create_loss("sigmoid"), create_loss("siglip"), create_loss("infonce")
    assert (sail.scale.item(), sail.bias.item(), sail.normalize) == (
        pytest.approx(20.0), -10.0, "pairs")
    assert sail.scale_bounds == (1.0, 100.0)
    assert (siglip.scale.item(), siglip.bias.item(), siglip.normalize) == (
        pytest.approx(10.0), -10.0, "batch")
    assert infonce.scale.item() == pytest.approx(1 / 0.07)
    assert create_loss("sigmoid", block_size=8, normalize="batch").normalize == "batch"


def _loss_and_grads(loss_fn: torch.nn.Module, image: torch.Tensor, texts: list[torch.Tensor],
                    dtype: torch.dtype | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss (under autocast of ``dtype`` if given) and its gradients w.r.t. the inputs."""
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        value, _ = loss_fn(image, texts)
    grads = torch.autograd.grad(value, [image, *texts, *loss_fn.parameters()])
    return value, list(grads)


@pytest.mark.parametrize("name", ["sigmoid", "infonce"])
def test_bf16_blocks_stay_within_a_bounded_error_of_float32(name: str) -> None:
    """Under bf16 autocast the blocks run bf16 matmuls with fp32 accumulation: the loss and
    every gradient stay within bf16 rounding of the exact float32 computation."""
    gen = torch.Generator().manual_seed(7)
    image = F.normalize(torch.randn(256, 64, generator=gen), dim=1).requires_grad_()
    texts = [F.normalize(image.detach() + torch.randn(256, 64, generator=gen), dim=1)
             .requires_grad_() for _ in range(2)]
    loss_fn = create_loss(name, block_size=96)
    exact, exact_grads = _loss_and_grads(loss_fn, image, texts, None)
    value, grads = _loss_and_grads(loss_fn, image, texts, torch.bfloat16)
    assert value.dtype == torch.float32
    assert abs(value.item() - exact.item()) <= 2e-3 * abs(exact.item())
    for got, want in zip(grads, exact_grads, strict=True):
        assert got.dtype == torch.float32
        error = (got - want).norm() / want.norm()
        assert error < 1e-2, error  # bf16 keeps 8 bits: ~0.4% per element, averaged down
    # and it really used bf16: the values are not bit-identical to float32
    assert value.item() != exact.item()


def test_fp16_autocast_keeps_float32_blocks() -> None:
    """fp16 would flush the negatives' gradients (sigmoid(-10) ~ 4.5e-5) to subnormals: the
    blocks stay float32 under fp16 autocast, equal to no autocast."""
    loss_fn = SigmoidLoss.sail(block_size=8)
    image, texts = _embeddings(20, 2, seed=2)
    exact, exact_grads = _loss_and_grads(loss_fn, image, texts, None)
    value, grads = _loss_and_grads(loss_fn, image, texts, torch.float16)
    torch.testing.assert_close(value, exact, rtol=1e-6, atol=0)
    for got, want in zip(grads, exact_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_registry_and_option_errors() -> None:
    with pytest.raises(UserError, match="unknown loss 'clip'.*sigmoid.*siglip.*infonce"):
        create_loss("clip")
    with pytest.raises(UserError, match="init_bias"):
        create_loss("infonce", init_bias=-10.0)
    with pytest.raises(UserError, match="normalize"):
        SigmoidLoss(normalize="mean")
    with pytest.raises(UserError, match="block_size"):
        InfoNCELoss(block_size=0)
    with pytest.raises(UserError, match="rank"):
        SigmoidLoss(rank=2, world_size=2)


def test_shape_mismatch_and_missing_process_group() -> None:
    image, (text,) = _embeddings(6, 1, seed=3)
    with pytest.raises(ValueError, match="same shape"):
        SigmoidLoss.sail()(image, text[:5])
    with pytest.raises(ValueError, match="world_size=2"):  # no process group: nothing gathered
        SigmoidLoss.sail(rank=0, world_size=2)(image, text)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op creates while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_blocked_path_never_creates_batch_squared_tensor(name: str) -> None:
    n, block = 2048, 128
    image, texts = _embeddings(n, 2, seed=4)
    # None: one block of n columns. InfoNCE then forms n x n (the positive control); the
    # sigmoid losses still cut their rows on the CPU into cache-sized tiles.
    unblocked = n * n if name == "infonce" else CPU_TILE_ELEMENTS
    for block_size, largest in [(block, n * block), (None, unblocked)]:
        loss_fn = create_loss(name, block_size=block_size)
        with _LargestTensor() as forward:
            loss, _ = loss_fn(image, texts)
        with _LargestTensor() as backward:
            loss.backward()
        assert (forward.largest, backward.largest) == (largest, largest)


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch
    import torch.nn.functional as F
    from vlalign.sail.losses import create_loss
    torch.manual_seed(0)
    n, d = {n}, 64
    image = F.normalize(torch.randn(n, d), dim=1).requires_grad_()
    text = F.normalize(torch.randn(n, d), dim=1).requires_grad_()
    loss_fn = create_loss("sigmoid", block_size={block})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss_fn(image, text)[0].backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss and glibc malloc are Linux's")
def test_blocked_sigmoid_peak_memory_is_far_below_batch_squared() -> None:
    n, block = 16384, 512  # one B x B float32 matrix would be 1 GiB; a block is 32 MiB
    # Large buffers straight from mmap, so freed blocks leave RSS and the peak is the live peak.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT.format(n=n, block=block)],
                            capture_output=True, text=True, check=True, timeout=120, env=env)
    growth = int(result.stdout.strip())
    assert growth < n * n * 4 // 4, f"peak RSS grew {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_saved_gradients_equal_recomputed_ones(dtype: torch.dtype | None) -> None:
    """``save_grads`` keeps dL/dlogits from the forward: the same loss and gradients as
    recomputing the logits in backward (fp32 and bf16 blocks), the reference's in fp32."""
    image, texts = _embeddings(40, 2, seed=5)
    recompute = SigmoidLoss.sail(block_size=16)
    saving = SigmoidLoss.sail(block_size=16, save_grads=True)
    want, want_grads = _loss_and_grads(recompute, image, texts, dtype)
    got, got_grads = _loss_and_grads(saving, image, texts, dtype)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4 if dtype is None else 2e-2, atol=1e-6)
    if dtype is None:
        ref_value, ref_grads = _reference(saving, image, texts)
        _assert_rel(got, ref_value)
        for a, b in zip(got_grads, ref_grads, strict=True):
            _assert_rel(a, b)


def test_vectorised_softplus_sum_equals_softplus() -> None:
    """The loss's softplus from exp and log (vectorised on every CPU) matches
    torch's softplus over the whole range of logits, deep negatives included."""
    z = torch.cat([torch.linspace(-100, 100, 20001), torch.randn(10000) * 15 - 10])
    for part in (z, z[z < -8], z[z > 8]):
        want = F.softplus(part.double()).sum()
        assert abs(_softplus_sum(part).double() - want) <= 1e-6 * want
