"""Rectified-flow transitions: ``x_t = (1 - sigma) x0 + sigma eps``, the model predicts the
velocity ``v = eps - x0``, one step goes from ``sigma`` to ``sigma_next < sigma`` (dt < 0).

``sigma`` / ``sigma_next`` are python floats or [B] tensors (one value per row, so rows of one
batch may sit at different steps). All math is float32 and returns float32.
"""
from __future__ import annotations

import torch

from ..registry import KERNELS
from .gaussian import GaussianKernel, levels_at, per_row


def flow_ode_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
) -> torch.Tensor:
    """Euler step ``x + v * (sigma_next - sigma)``. x, v: [B, ...] (image [B, C, H, W] or video [B, C, F, H, W]) -> same shape."""
    x = x.float()
    dt = per_row(sigma_next, x) - per_row(sigma, x)
    return x + v.float() * dt


def flow_sde_mean_std(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    eta: float,
    sigma_max: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Flow-GRPO SDE step.

    ``s = eta sqrt(sigma / (1 - sigma_d))`` with ``sigma_d = sigma_max`` where ``sigma >= 1``
    (``sigma_max``: the first level below 1 of the schedule) and ``sigma`` elsewhere;
    ``mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt``,
    ``std = s sqrt(-dt)``.
    x, v: [B, ...] -> (mean [B, ...], std [B, 1, ..., 1]).
    """
    x = x.float()
    v = v.float()
    sig = per_row(sigma, x)
    dt = per_row(sigma_next, x) - sig
    sigma_max = torch.as_tensor(sigma_max, dtype=torch.float32, device=x.device)
    sigma_d = torch.where(sig >= 1.0, sigma_max, sig)
    s = eta * torch.sqrt(sig / (1.0 - sigma_d))
    mean = x * (1.0 + s**2 / (2.0 * sig) * dt) + v * (1.0 + s**2 * (1.0 - sig) / (2.0 * sig)) * dt
    std = s * torch.sqrt(-dt)
    return mean, std


def flow_predict_x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Clean-sample estimate ``x0 = x - sigma v`` (for previews). x, v [B, ...]."""
    x = x.float()
    return x - per_row(sigma, x) * v.float()


def first_level_below_one(levels: torch.Tensor) -> torch.Tensor:
    """0-dim float32: the first entry of the [T+1] sigma schedule that is < 1 (no host sync)."""
    levels = levels.float()
    return levels[torch.argmax((levels < 1.0).int())]


@KERNELS.register_module()
class FlowMatchingKernel(GaussianKernel):
    """Flow-matching kernel (velocity prediction) over a sigma schedule ``levels`` [T+1], 1 -> 0.

    Args:
        eta: noise scale of the SDE (Flow-GRPO's ``noise_level``), >= 0; 0 makes the SDE the ODE.
    """

    def __init__(self, eta: float = 0.7) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0, got eta={eta!r}")
        self.eta = float(eta)

    def ode_step(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        sigma, sigma_next = levels_at(levels, step, x.device)
        return flow_ode_step(x, model_output, sigma, sigma_next)

    def sde_mean_std(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, sigma_next = levels_at(levels, step, x.device)
        sigma_max = first_level_below_one(levels.to(x.device))
        return flow_sde_mean_std(x, model_output, sigma, sigma_next, self.eta, sigma_max)

    def predict_x0(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        return flow_predict_x0(x, model_output, levels.to(x.device)[step])

    def __repr__(self) -> str:
        return f"FlowMatchingKernel(eta={self.eta})"
