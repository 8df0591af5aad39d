"""The PPO-clipped GRPO loss over a batch of edges (pure function + a registered config holder).

Log-probs are per-element Gaussian log-densities averaged over latent dims, so ratios stay very
close to 1 and useful clip ranges are tiny (1e-4 .. 1e-3).
"""
from __future__ import annotations

import torch
from torch import Tensor

from treegrpo.registry import LOSSES


def _check_hparams(clip_range: float, adv_clip_max: float | None, beta: float) -> None:
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range!r}")
    if adv_clip_max is not None and not adv_clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0 or None, got {adv_clip_max!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")


def grpo_clip_loss(
    log_prob_new: Tensor,
    log_prob_old: Tensor,
    advantages: Tensor,
    clip_range: float,
    adv_clip_max: float | None = None,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy-gradient loss, averaged over edges.

    Args:
        log_prob_new: [E] log-probs under the current policy (carries the gradient).
        log_prob_old: [E] log-probs under the sampling policy (treated as constants).
        advantages: [E] advantage of each edge (treated as constants).
        clip_range: ratio clip ``eps``: the ratio is clipped to ``[1 - eps, 1 + eps]``.
        adv_clip_max: clamp advantages to ``[-adv_clip_max, adv_clip_max]`` first (None: off).
        kl: [E] per-edge KL to the reference policy, added as ``beta * mean(kl)`` (None: off).
        beta: KL coefficient.

    Returns:
        ``(loss, stats)``: scalar loss and python floats ``policy_loss``, ``approx_kl``
        (``0.5 mean(logratio^2)``), ``approx_kl_k3`` (``mean(ratio - 1 - logratio)``),
        ``clip_frac`` (share of edges with ``|ratio - 1| > clip_range``), ``ratio_mean``,
        ``ratio_max_dev`` (``max |ratio - 1|``) and ``kl`` (when given).
    """
    _check_hparams(clip_range, adv_clip_max, beta)
    if log_prob_new.dim() != 1 or log_prob_new.numel() == 0:
        raise ValueError(f"log_prob_new must be a non-empty 1-D tensor [E], "
                         f"got {tuple(log_prob_new.shape)}")
    shape = log_prob_new.shape
    for name, value in (("log_prob_old", log_prob_old), ("advantages", advantages), ("kl", kl)):
        if value is not None and value.shape != shape:
            raise ValueError(f"{name} must have the shape of log_prob_new {tuple(shape)}, "
                             f"got {tuple(value.shape)}")
    adv = advantages.detach().to(log_prob_new.dtype)
    if adv_clip_max is not None:
        adv = adv.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob_new - log_prob_old.detach().to(log_prob_new.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    loss = policy_loss
    with torch.no_grad():
        log_ratio_d, ratio_d = log_ratio.detach(), ratio.detach()
        deviation = (ratio_d - 1.0).abs()
        stats = {
            "policy_loss": float(policy_loss.detach()),
            "approx_kl": float(0.5 * log_ratio_d.pow(2).mean()),
            "approx_kl_k3": float(((ratio_d - 1.0) - log_ratio_d).mean()),
            "clip_frac": float((deviation > clip_range).to(ratio_d.dtype).mean()),
            "ratio_mean": float(ratio_d.mean()),
            "ratio_max_dev": float(deviation.max()),
        }
    if kl is not None:
        kl_mean = kl.mean()
        loss = loss + beta * kl_mean
        stats["kl"] = float(kl_mean.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats


@LOSSES.register_module()
class GRPOClipLoss:
    """Config holder for :func:`grpo_clip_loss`.

    Args:
        clip_range: ratio clip ``eps`` (> 0).
        adv_clip_max: advantage clamp (> 0) or None for no clamp.
        beta: KL-to-reference coefficient (>= 0); ``needs_reference`` is True when beta > 0.
    """

    def __init__(self, clip_range: float = 1e-4, adv_clip_max: float | None = 5.0,
                 beta: float = 0.0) -> None:
        _check_hparams(clip_range, adv_clip_max, beta)
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.beta = beta

    @property
    def needs_reference(self) -> bool:
        """Whether the caller must compute a per-edge KL to the reference policy."""
        return self.beta > 0

    def __call__(self, log_prob_new: Tensor, log_prob_old: Tensor, advantages: Tensor,
                 kl: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """[E] tensors -> (scalar loss, stats); see :func:`grpo_clip_loss`."""
        if self.needs_reference and kl is None:
            raise ValueError(f"beta={self.beta} > 0 needs kl [E] (the KL to the reference policy)")
        return grpo_clip_loss(log_prob_new, log_prob_old, advantages, self.clip_range,
                              self.adv_clip_max, kl, self.beta)
