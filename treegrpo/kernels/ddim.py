"""DDIM / DDPM transitions (DDPO form) for epsilon- or v-predicting diffusion models.

``a = alpha_bar_t`` is the cumulative alpha of the current timestep and ``a_prev`` that of the next
(less noisy) one; both are python floats or [B] tensors (one value per row). No clipping of the
predicted x0. All math is float32 and returns float32.
"""
from __future__ import annotations

import torch

from ..registry import KERNELS
from .gaussian import GaussianKernel, levels_at, per_row

PREDICTION_TYPES = ("epsilon", "v_prediction")


def v_to_eps(x: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """v-prediction -> epsilon: ``eps = sqrt(a) v + sqrt(1 - a) x``. x, v: [B, ...] -> [B, ...]."""
    x = x.float()
    a = per_row(alpha_bar, x)
    return torch.sqrt(a) * v.float() + torch.sqrt(1.0 - a) * x


def ddim_mean_std(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: torch.Tensor | float,
    alpha_bar_prev: torch.Tensor | float,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the DDIM step with noise scale ``eta`` (1 = DDPM posterior, 0 = DDIM ODE).

    ``x0 = (x - sqrt(1-a) eps) / sqrt(a)``,
    ``sigma_t = eta sqrt((1-a_prev)/(1-a)) sqrt(1 - a/a_prev)``,
    ``mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps``, ``std = sigma_t``.
    The direction coefficient is clamped at 0 against rounding (exact for 0 <= eta <= 1).
    x, eps: [B, C, H, W] -> (mean [B, C, H, W], std [B, 1, 1, 1]).
    """
    x = x.float()
    eps = eps.float()
    a = per_row(alpha_bar, x)
    a_prev = per_row(alpha_bar_prev, x)
    x0 = (x - torch.sqrt(1.0 - a) * eps) / torch.sqrt(a)
    std = eta * torch.sqrt((1.0 - a_prev) / (1.0 - a)) * torch.sqrt(1.0 - a / a_prev)
    direction = torch.sqrt(torch.clamp(1.0 - a_prev - std**2, min=0.0))
    mean = torch.sqrt(a_prev) * x0 + direction * eps
    return mean, std


def ddim_ode_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: torch.Tensor | float,
    alpha_bar_prev: torch.Tensor | float,
) -> torch.Tensor:
    """Deterministic DDIM step (the eta = 0 mean). x, eps: [B, C, H, W] -> [B, C, H, W]."""
    mean, _ = ddim_mean_std(x, eps, alpha_bar, alpha_bar_prev, eta=0.0)
    return mean


def ddim_predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """Clean-sample estimate ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``. x, eps [B, C, H, W]."""
    x = x.float()
    a = per_row(alpha_bar, x)
    return (x - torch.sqrt(1.0 - a) * eps.float()) / torch.sqrt(a)


@KERNELS.register_module()
class DDIMKernel(GaussianKernel):
    """DDIM kernel over an alpha_bar schedule ``levels`` [T+1] (increasing; ``levels[T]`` is the
    final alpha_bar, 1.0 with ``set_alpha_to_one``; a step into alpha_bar = 1 has std 0, so keep it
    out of the SDE window or use a final alpha_bar < 1).

    Args:
        eta: noise scale in [0, 1] (DDPO uses 1.0); 0 makes the SDE the deterministic DDIM step.
        prediction_type: 'epsilon' or 'v_prediction' (converted to epsilon before the step).
    """

    def __init__(self, eta: float = 1.0, prediction_type: str = "epsilon") -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be a number in [0, 1], got eta={eta!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        self.eta = float(eta)
        self.prediction_type = prediction_type

    def _eps(self, x: torch.Tensor, model_output: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return v_to_eps(x, model_output, a)
        return model_output.float()

    def ode_step(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        a, a_prev = levels_at(levels, step, x.device)
        return ddim_ode_step(x, self._eps(x, model_output, a), a, a_prev)

    def sde_mean_std(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a, a_prev = levels_at(levels, step, x.device)
        return ddim_mean_std(x, self._eps(x, model_output, a), a, a_prev, self.eta)

    def predict_x0(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        a = levels.to(x.device)[step]
        return ddim_predict_x0(x, self._eps(x, model_output, a), a)

    def __repr__(self) -> str:
        return f"DDIMKernel(eta={self.eta}, prediction_type={self.prediction_type!r})"
