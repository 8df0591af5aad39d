"""GRPO clipped loss against hand computations, gradients and finite differences."""
from __future__ import annotations

import math

import pytest
import torch

from treegrpo.losses import GRPOClipLoss, grpo_clip_loss
from treegrpo.registry import LOSSES, build

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


# Five edges, clip_range 0.1 (ratio clipped to [0.9, 1.1]):
#   e0 adv +1, ratio 1.05 inside:          max(-1.05, -1.05) = -1.05  (gradient flows)
#   e1 adv +1, ratio 1.2  above the clip:  max(-1.2,  -1.1)  = -1.1   (clipped branch, no grad)
#   e2 adv -2, ratio 0.8  below the clip:  max( 1.6,   1.8)  =  1.8   (clipped branch, no grad)
#   e3 adv -2, ratio 1.2  above the clip:  max( 2.4,   2.2)  =  2.4   (unclipped branch)
#   e4 adv +1, ratio 0.8  below the clip:  max(-0.8,  -0.9)  = -0.8   (unclipped branch)
RATIOS = [1.05, 1.2, 0.8, 1.2, 0.8]
ADV = [1.0, 1.0, -2.0, -2.0, 1.0]
HAND_LOSS = (-1.05 - 1.1 + 1.8 + 2.4 - 0.8) / 5  # 0.25


def edges():
    new = t([math.log(r) for r in RATIOS]).requires_grad_(True)
    return new, torch.zeros(5, dtype=F64), t(ADV)


def test_loss_value_and_both_branches_by_hand():
    new, old, adv = edges()
    loss, stats = grpo_clip_loss(new, old, adv, clip_range=0.1)
    assert loss.dim() == 0
    assert math.isclose(loss.item(), HAND_LOSS, abs_tol=1e-12)
    assert math.isclose(stats["policy_loss"], 0.25, abs_tol=1e-12)
    assert math.isclose(stats["loss"], 0.25, abs_tol=1e-12)
    loss.backward()
    # d/dlogp of -adv * ratio is -adv * ratio / E on the unclipped branch, 0 on the clipped one
    hand_grad = [-1.0 * 1.05 / 5, 0.0, 0.0, 2.0 * 1.2 / 5, -1.0 * 0.8 / 5]
    torch.testing.assert_close(new.grad, t(hand_grad), rtol=0, atol=1e-12)


def test_stats_by_hand():
    new, old, adv = edges()
    _, stats = grpo_clip_loss(new, old, adv, clip_range=0.1)
    logs = [math.log(r) for r in RATIOS]
    assert math.isclose(stats["approx_kl"], 0.5 * sum(x * x for x in logs) / 5, rel_tol=1e-12)
    k3 = sum((r - 1) - x for r, x in zip(RATIOS, logs)) / 5
    assert math.isclose(stats["approx_kl_k3"], k3, rel_tol=1e-12)
    assert math.isclose(stats["clip_frac"], 4 / 5)  # only e0 has |ratio - 1| <= 0.1
    assert math.isclose(stats["ratio_mean"], 5.05 / 5, rel_tol=1e-12)
    assert math.isclose(stats["ratio_max_dev"], 0.2, rel_tol=1e-12)
    assert "kl" not in stats
    assert all(isinstance(value, float) for value in stats.values())


def test_ratio_one_gives_minus_mean_advantage():
    adv = t([0.5, -1.5, 2.0, 3.0])
    logp = t([-0.3, 1.2, 0.0, -5.0])
    loss, stats = grpo_clip_loss(logp.clone().requires_grad_(True), logp, adv, clip_range=1e-4)
    assert math.isclose(loss.item(), -(0.5 - 1.5 + 2.0 + 3.0) / 4, abs_tol=1e-12)
    assert stats["clip_frac"] == 0.0
    assert stats["approx_kl"] == 0.0 and stats["approx_kl_k3"] == 0.0
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max_dev"] == 0.0


def test_advantage_clipping():
    logp = torch.zeros(3, dtype=F64)
    adv = t([10.0, -10.0, 1.0])
    loss, _ = grpo_clip_loss(logp, logp, adv, clip_range=0.1, adv_clip_max=5.0)
    assert math.isclose(loss.item(), -(5.0 - 5.0 + 1.0) / 3, abs_tol=1e-12)
    loss, _ = grpo_clip_loss(logp, logp, t([10.0, -2.0, 1.0]), clip_range=0.1, adv_clip_max=5.0)
    assert math.isclose(loss.item(), -(5.0 - 2.0 + 1.0) / 3, abs_tol=1e-12)
    loss, _ = grpo_clip_loss(logp, logp, t([10.0, -2.0, 1.0]), clip_range=0.1)
    assert math.isclose(loss.item(), -(10.0 - 2.0 + 1.0) / 3, abs_tol=1e-12)


def test_kl_term_adds_beta_times_mean_kl():
    new, old, adv = edges()
    kl = t([0.1, 0.3, 0.0, 0.4, 0.2]).requires_grad_(True)  # mean 0.2
    loss, stats = grpo_clip_loss(new, old, adv, clip_range=0.1, kl=kl, beta=0.5)
    assert math.isclose(loss.item(), HAND_LOSS + 0.5 * 0.2, abs_tol=1e-12)
    assert math.isclose(stats["kl"], 0.2, abs_tol=1e-12)
    assert math.isclose(stats["policy_loss"], HAND_LOSS, abs_tol=1e-12)
    loss.backward()
    torch.testing.assert_close(kl.grad, torch.full((5,), 0.5 / 5, dtype=F64), rtol=0, atol=1e-12)


def test_no_gradient_into_old_log_probs_or_advantages():
    new, _, _ = edges()
    old = torch.zeros(5, dtype=F64, requires_grad=True)
    adv = t(ADV).requires_grad_(True)
    loss, _ = grpo_clip_loss(new, old, adv, clip_range=0.1)
    loss.backward()
    assert old.grad is None and adv.grad is None
    assert new.grad is not None


def test_gradcheck_away_from_clip_kinks():
    # ratios 0.7 .. 1.3 for clip_range 0.2: some inside, some outside, none within 1e-3 of a kink
    old = t([0.3, -0.2, 1.0, 0.0, -1.5, 0.4])
    ratios = [0.7, 0.95, 1.05, 1.3, 1.15, 0.85]
    new = (old + t([math.log(r) for r in ratios])).requires_grad_(True)
    adv = t([1.5, -0.5, 2.0, -1.0, 0.7, -2.5])
    kl = t([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])

    def fn(x):
        return grpo_clip_loss(x, old, adv, clip_range=0.2, adv_clip_max=2.2, kl=kl, beta=0.3)[0]

    assert torch.autograd.gradcheck(fn, (new,), eps=1e-6, atol=1e-8)
    # and manual central differences of one coordinate inside the clip range (index 1)
    h = 1e-6
    plus, minus = new.detach().clone(), new.detach().clone()
    plus[1] += h
    minus[1] -= h
    numeric = (fn(plus).item() - fn(minus).item()) / (2 * h)
    assert math.isclose(numeric, 0.5 * 0.95 / 6, rel_tol=1e-6)  # -adv * ratio / E


def test_loss_class_defaults_build_and_needs_reference():
    loss_fn = build(LOSSES, dict(type="GRPOClipLoss", clip_range=0.1, adv_clip_max=None))
    assert isinstance(loss_fn, GRPOClipLoss)
    assert not loss_fn.needs_reference
    new, old, adv = edges()
    loss, _ = loss_fn(new, old, adv)
    assert math.isclose(loss.item(), HAND_LOSS, abs_tol=1e-12)
    default = GRPOClipLoss()
    assert (default.clip_range, default.adv_clip_max, default.beta) == (1e-4, 5.0, 0.0)
    with_ref = GRPOClipLoss(clip_range=0.1, beta=0.5)
    assert with_ref.needs_reference
    with pytest.raises(ValueError, match="needs kl"):
        with_ref(new, old, adv)
    kl = torch.full((5,), 0.2, dtype=F64)
    assert math.isclose(with_ref(new, old, adv, kl)[0].item(), HAND_LOSS + 0.1, abs_tol=1e-12)


def test_validation_errors():
    with pytest.raises(ValueError, match="clip_range must be > 0, got 0"):
        GRPOClipLoss(clip_range=0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        GRPOClipLoss(beta=-0.1)
    with pytest.raises(ValueError, match="adv_clip_max must be > 0 or None"):
        GRPOClipLoss(adv_clip_max=0.0)
    new, old, adv = edges()
    with pytest.raises(ValueError, match="advantages must have the shape"):
        grpo_clip_loss(new, old, adv[:3], clip_range=0.1)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        grpo_clip_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), clip_range=0.1)
