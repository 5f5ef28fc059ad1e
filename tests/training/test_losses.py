"""Preference losses against hand-computed values (sequence log-probs: tests/test_logprobs.py)."""

from __future__ import annotations

import math

import pytest
import torch

from cst_dist.training.losses import LOSS_TYPES, preference_loss

IGNORE = -100


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out with math so the expectations do not reuse torch."""
    return math.log1p(math.exp(x))


def pair(pc: float, pr: float, rc: float, rr: float, **kwargs):
    t = [torch.tensor([v], dtype=torch.float64) for v in (pc, pr, rc, rr)]
    losses, chosen, rejected = preference_loss(*t, **kwargs)
    return losses.item(), chosen.item(), rejected.item()


# --- loss values ---------------------------------------------------------------------------------------------------
# Point A: policy (-1, -3), reference (-2, -2) -> logits = (-1 + 3) - (-2 + 2) = 2.  With beta = 0.5, beta*logits = 1.
A = (-1.0, -3.0, -2.0, -2.0)
# Point B: policy (-5, -2), reference (-4, -4) -> logits = -3 - 0 = -3.  With beta = 0.1, beta*logits = -0.3.
B = (-5.0, -2.0, -4.0, -4.0)


def test_sigmoid_values():
    # Equal log-ratios -> logits 0 -> -log sigmoid(0) = ln 2 = 0.693147, for any beta.
    assert pair(-7.0, -3.0, -7.0, -3.0, beta=0.3)[0] == pytest.approx(math.log(2), abs=1e-12)
    # A: -log sigmoid(1) = log(1 + e^-1) = 0.313262
    assert pair(*A, beta=0.5)[0] == pytest.approx(softplus(-1.0), abs=1e-12)
    assert softplus(-1.0) == pytest.approx(0.313262, abs=1e-6)
    # B: -log sigmoid(-0.3) = log(1 + e^0.3) = 0.854355
    assert pair(*B, beta=0.1)[0] == pytest.approx(softplus(0.3), abs=1e-12)
    # cDPO, ls = 0.1 at A: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1) = 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262
    expected = 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)
    assert pair(*A, beta=0.5, label_smoothing=0.1)[0] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.413262, abs=1e-6)
    # At logits 0 smoothing changes nothing: 0.9 ln2 + 0.1 ln2 = ln 2.
    assert pair(0.0, 0.0, 0.0, 0.0, label_smoothing=0.1)[0] == pytest.approx(math.log(2), abs=1e-12)


def test_ipo_values():
    # A: (logits - 1/(2 beta))^2 = (2 - 1)^2 = 1
    assert pair(*A, beta=0.5, loss_type="ipo")[0] == pytest.approx(1.0, abs=1e-12)
    # B: (-3 - 5)^2 = 64
    assert pair(*B, beta=0.1, loss_type="ipo")[0] == pytest.approx(64.0, abs=1e-12)
    # logits 0, beta 0.1: (0 - 5)^2 = 25
    assert pair(0.0, 0.0, 0.0, 0.0, beta=0.1, loss_type="ipo")[0] == pytest.approx(25.0, abs=1e-12)


def test_hinge_values():
    # A: relu(1 - 0.5 * 2) = 0 (margin reached)
    assert pair(*A, beta=0.5, loss_type="hinge")[0] == pytest.approx(0.0, abs=1e-12)
    # B: relu(1 - 0.1 * -3) = 1.3
    assert pair(*B, beta=0.1, loss_type="hinge")[0] == pytest.approx(1.3, abs=1e-12)
    # logits 1, beta 0.5: relu(1 - 0.5) = 0.5
    assert pair(0.0, -1.0, 0.0, 0.0, beta=0.5, loss_type="hinge")[0] == pytest.approx(0.5, abs=1e-12)


def test_robust_values():
    # Without smoothing robust DPO is plain DPO: A gives log(1 + e^-1) = 0.313262.
    assert pair(*A, beta=0.5, loss_type="robust")[0] == pytest.approx(softplus(-1.0), abs=1e-12)
    # ls = 0.1 at A: (0.9 * log(1 + e^-1) - 0.1 * log(1 + e^1)) / 0.8 = (0.281936 - 0.131326) / 0.8 = 0.188262
    expected = (0.9 * softplus(-1.0) - 0.1 * softplus(1.0)) / 0.8
    assert pair(*A, beta=0.5, loss_type="robust", label_smoothing=0.1)[0] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.188262, abs=1e-6)
    # ls = 0.1 at logits 0: (0.9 ln2 - 0.1 ln2) / 0.8 = ln 2
    got = pair(0.0, 0.0, 0.0, 0.0, loss_type="robust", label_smoothing=0.1)[0]
    assert got == pytest.approx(math.log(2), abs=1e-12)


def test_losses_are_per_example():
    # Rows are A and B stacked: the result is [2], row i equals the single-example value.
    cols = [torch.tensor([a, b], dtype=torch.float64) for a, b in zip(A, B, strict=True)]
    losses, chosen, rejected = preference_loss(*cols, beta=0.5)
    assert losses.shape == chosen.shape == rejected.shape == (2,)
    assert losses[0].item() == pytest.approx(softplus(-1.0), abs=1e-12)
    assert losses[1].item() == pytest.approx(softplus(1.5), abs=1e-12)  # beta*logits = 0.5 * -3


# --- gradients and rewards -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [(name, 0.0) for name in sorted(LOSS_TYPES)] + [("sigmoid", 0.1), ("robust", 0.1)],
)
def test_gradient_pushes_chosen_up_and_rejected_down(loss_type, label_smoothing):
    # logits = 0.5, beta = 0.5: beta*logits = 0.25 < 1 keeps the hinge active and IPO below its target 1/(2 beta) = 1.
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    rc, rr = torch.tensor([-2.5]), torch.tensor([-3.0])
    losses, _, _ = preference_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type, label_smoothing=label_smoothing)
    losses.sum().backward()
    assert pc.grad.item() < 0  # descending the loss raises log p(chosen)
    assert pr.grad.item() > 0  # ... and lowers log p(rejected)
    assert pc.grad.item() == pytest.approx(-pr.grad.item())


def test_rewards_values_and_detached():
    pc = torch.tensor([-1.0, -5.0], requires_grad=True)
    pr = torch.tensor([-3.0, -2.0], requires_grad=True)
    rc, rr = torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -4.0])
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, beta=0.5)
    # chosen: 0.5 * (-1 + 2) = 0.5, 0.5 * (-5 + 4) = -0.5; rejected: 0.5 * (-3 + 2) = -0.5, 0.5 * (-2 + 4) = 1.0
    assert chosen.tolist() == pytest.approx([0.5, -0.5])
    assert rejected.tolist() == pytest.approx([-0.5, 1.0])
    assert not chosen.requires_grad and not rejected.requires_grad
    assert losses.requires_grad


# --- argument validation -------------------------------------------------------------------------------------------

ONE = torch.zeros(2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"loss_type": "kto"}, "loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": 0.5, "loss_type": "robust"}, "label_smoothing"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "train.label_smoothing"),
        ({"label_smoothing": 0.1, "loss_type": "hinge"}, "train.label_smoothing"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        preference_loss(ONE, ONE, ONE, ONE, **kwargs)


def test_unknown_loss_type_lists_allowed():
    with pytest.raises(ValueError) as err:
        preference_loss(ONE, ONE, ONE, ONE, loss_type="kto")
    assert all(name in str(err.value) for name in ("sigmoid", "ipo", "hinge", "robust"))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        preference_loss(ONE, torch.zeros(3), ONE, ONE)
