"""Lion and the schedule: the foreach update equals the textbook per-tensor formula."""

import math

import pytest
import torch

from vlalign.errors import UserError
from vlalign.train.optim import Lion, cosine_lr, create_optimizer


def test_lion_matches_the_reference_update():
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    reference = [w.detach().clone() for w in weights]
    moments = [torch.zeros_like(w) for w in reference]
    optimizer = Lion(weights, lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for w, g in zip(weights, grads):
            w.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):
            reference[i] *= 1 - 0.1 * 0.01
            reference[i] -= 0.1 * torch.sign(0.9 * moments[i] + 0.1 * g)
            moments[i] = 0.99 * moments[i] + 0.01 * g
    for w, r in zip(weights, reference):
        torch.testing.assert_close(w.detach(), r)


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(step, 100, 1.0, 0.1) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_weight_decay_skips_vectors_and_named_parameters_and_unknown_optimizer_errors():
    matrix, vector = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    position, frozen = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2, 2))
    frozen.requires_grad_(False)
    named = [("w", matrix), ("b", vector), ("pos_embed", position), ("frozen", frozen)]
    optimizer = create_optimizer("adamw", named, 1e-3, 0.5, (0.9, 0.99), eps=1e-6,
                                 no_weight_decay={"pos_embed"})
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)
    assert decay["params"] == [matrix] and no_decay["params"] == [vector, position]
    assert decay["eps"] == 1e-6  # AdamW's eps is passed through (EVA-02 uses 1e-6)
    with pytest.raises(UserError, match="unknown optimizer 'sgd'; valid: lion, adamw"):
        create_optimizer("sgd", [("w", matrix)], 1e-3, 0.0, (0.9, 0.99))
