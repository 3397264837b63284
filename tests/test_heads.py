"""Alignment heads: shapes, the paper's parameter counts, per-token use, bf16, registry."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.errors import UserError
from vlalign.sail.heads import HEADS, GLUHead, create_head

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
