"""Alignment heads: shapes, the paper's parameter counts, per-token use, bf16, registry."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.errors import UserError
from vlalign.sail.config import HeadConfig
from vlalign.sail.heads import HEADS, GLUHead, create_head, xavier_init_
from vlalign.sail.train import _head

KINDS = sorted(kind for kind in HEADS if kind != "identity")  # the trainable heads


pytestmark = pytest.mark.usefixtures("one_thread")


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(5, 12), (3, 7, 12)])
def test_shapes(kind: str, shape: tuple[int, ...]) -> None:
    head = create_head(kind, 12, 6)
    assert head(torch.randn(shape)).shape == (*shape[:-1], 6)


@pytest.mark.parametrize(("in_dim", "paper_millions"), [(2048, 83.9), (1024, 25.2)])
def test_glu_param_counts_match_paper(in_dim: int, paper_millions: float) -> None:
    with torch.device("meta"):  # no memory, no init cost
        head = GLUHead(in_dim, 1024, width_factor=8)
    assert head.w1.out_features == 8 * in_dim
    assert abs(_param_count(head) / 1e6 - paper_millions) < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_per_token_equals_per_row(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, 12, 6)
    tokens = torch.randn(4, 9, 12)  # (B, N, D)
    per_row = head(tokens.reshape(-1, 12)).reshape(4, 9, 6)
    torch.testing.assert_close(head(tokens), per_row, rtol=1e-6, atol=1e-6)


def test_identity_head_passes_through_and_needs_equal_dims() -> None:
    x = torch.randn(3, 5, 8)
    assert torch.equal(create_head("identity", 8, 8)(x), x)
    with pytest.raises(UserError, match="equal dims, got 8 -> 4"):
        create_head("identity", 8, 4)


def test_glu_is_layernorm_gated_relu6() -> None:
    torch.manual_seed(0)
    head = GLUHead(8, 4, width_factor=2)
    x = torch.randn(3, 8)
    h = torch.nn.functional.layer_norm(x, (8,), head.norm.weight, head.norm.bias)
    expected = head.w_out(torch.nn.functional.relu6(head.w1(h)) * head.w2(h))
    torch.testing.assert_close(head(x), expected)


def _glu_reference(head: GLUHead, x: torch.Tensor) -> torch.Tensor:
    """The head written the plain way: two GEMMs, ReLU6, a product (the official StarMLP)."""
    h = torch.nn.functional.layer_norm(x, x.shape[-1:], head.norm.weight, head.norm.bias)
    return head.w_out(torch.nn.functional.relu6(head.w1(h)) * head.w2(h))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fused_glu_equals_the_two_gemm_head_with_gradients(dtype: torch.dtype | None) -> None:
    """One GEMM over [W1; W2] and the one-step clamp-times-product give the plain head's
    outputs and gradients, also where the gate hits the ReLU6 floor and ceiling."""
    torch.manual_seed(0)
    head = GLUHead(12, 6, width_factor=3)
    with torch.no_grad():
        head.w1.weight.mul_(10)  # gates wide enough to reach both ReLU6 bounds
    x = torch.randn(2, 7, 12)

    def run(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inp = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = fn(inp)
        grads = torch.autograd.grad(out.float().square().sum(), [inp, *head.parameters()])
        return out, list(grads)

    out, grads = run(head)
    want, want_grads = run(lambda inp: _glu_reference(head, inp))
    assert out.dtype == want.dtype
    if dtype is None:
        torch.testing.assert_close(out, want)
        for got, ref in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got, ref)
    else:  # bf16: both round, in different orders; bound the relative error of each tensor
        for got, ref in zip([out, *grads], [want, *want_grads], strict=True):
            assert ((got.float() - ref.float()).norm() / ref.float().norm()) < 1e-2
    gate = head.w1(torch.nn.functional.layer_norm(x, (12,), head.norm.weight, head.norm.bias))
    assert (gate < 0).any() and (gate > 6).any()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward_backward_finite(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, 16, 8)
    x = (4 * torch.randn(6, 5, 16)).requires_grad_()  # large enough to hit the ReLU6 ceiling
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    out.float().square().sum().backward()
    grads = [x.grad, *(p.grad for p in head.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_params_forward_backward_finite(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, 16, 8).to(torch.bfloat16)
    x = (4 * torch.randn(6, 16)).to(torch.bfloat16).requires_grad_()
    out = head(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    grads = [x.grad, *(p.grad for p in head.parameters())]
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all()
               for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trips_through_json(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, 12, 6)
    rebuilt = create_head(**json.loads(json.dumps(head.config)))
    rebuilt.load_state_dict(head.state_dict())  # same architecture: keys and shapes match
    assert rebuilt.config == head.config


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(UserError, match="unknown head kind 'star'") as err:
        create_head("star", 8, 4)
    assert all(kind in str(err.value) for kind in KINDS)


def test_bad_option_is_user_error() -> None:
    with pytest.raises(UserError, match="width_factor"):
        create_head("linear", 8, 4, width_factor=8)


def test_xavier_init_is_the_official_initialisation() -> None:
    """Xavier-uniform weights (bound sqrt(6 / (fan_in + fan_out))), zero biases, LayerNorm at
    (1, 0), as model/sail_model.py's _initialize_weights; a recipe asks for it by name."""
    torch.manual_seed(0)
    head = xavier_init_(GLUHead(64, 32, width_factor=4))
    for layer in (head.w1, head.w2, head.w_out):
        fan_out, fan_in = layer.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert not layer.bias.any()
    assert torch.equal(head.norm.weight, torch.ones(64)) and not head.norm.bias.any()
    built = _head(HeadConfig("linear", init="xavier"), 64, 32)
    assert not built.proj.bias.any()  # PyTorch's default init draws a non-zero bias
    assert _head(HeadConfig("linear"), 64, 32).proj.bias.any()
