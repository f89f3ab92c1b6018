"""dlbook.distill: the distillation loss against a direct formula, its limits, and the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import distill, train


def _formula(s, t, y, T, alpha):
    p_t = torch.softmax(t / T, dim=1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, dim=1))).sum(1).mean()
    ce = -torch.log_softmax(s, dim=1)[torch.arange(len(y)), y].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,c", [(1, 2), (5, 10), (8, 3)])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (0.5, 1.0)])
def test_distillation_loss_matches_formula_and_gradient(seed, n, c, T, alpha):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    s2 = s.detach().clone().requires_grad_(True)
    got = distill.distillation_loss(s, t, y, T, alpha)
    expected = _formula(s2, t, y, T, alpha)
    torch.testing.assert_close(got, expected)
    got.backward()
    expected.backward()
    torch.testing.assert_close(s.grad, s2.grad)


def test_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient():
    s = torch.randn(4, 5)
    t = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss = distill.distillation_loss(s.requires_grad_(True), t, y, 3.0, 0.0)
    torch.testing.assert_close(loss, F.cross_entropy(s, y))
    distill.distillation_loss(s, t, y, 3.0, 1.0).backward()
    assert t.grad is None


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 8.0))
def test_soft_term_is_zero_when_student_equals_teacher(seed, T):
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed))
    y = torch.zeros(3, dtype=torch.int64)
    assert distill.distillation_loss(logits, logits.clone(), y, T, 1.0).abs().item() < 1e-5
    # and positive otherwise (KL >= 0)
    assert distill.distillation_loss(logits, logits.flip(1), y, T, 1.0).item() >= -1e-6


def test_distillation_loss_bad_input():
    s, y = torch.randn(3, 4), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="same shape"):
        distill.distillation_loss(s, torch.randn(3, 5), y)
    with pytest.raises(ValueError, match="labels"):
        distill.distillation_loss(s, s, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature"):
        distill.distillation_loss(s, s, y, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distill.distillation_loss(s, s, y, alpha=1.5)


def test_fit_distill_learns_from_teacher():
    torch.manual_seed(0)
    X = torch.randn(256, 4)
    y = (X[:, 0] > 0).long()
    teacher = nn.Linear(4, 2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[-5.0, 0, 0, 0], [5.0, 0, 0, 0]]))
        teacher.bias.zero_()
    student = nn.Linear(4, 2)
    loader = train.make_loader(X, y, batch_size=32)
    history = distill.fit_distill(student, teacher, loader, epochs=15, live=False, device=torch.device("cpu"),
                                  optimizer=torch.optim.Adam(student.parameters(), 0.05), val_loader=loader)
    assert history["val_accuracy"][-1] > 0.95
    assert len(history["train_loss"]) == 15 and history["seconds"][0] > 0
    with pytest.raises(ValueError):
        distill.fit_distill(student, teacher, loader, epochs=0, optimizer=torch.optim.SGD(student.parameters(), 0.1))
