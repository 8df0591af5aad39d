"""Per-element Gaussian densities, averaged over the latent dims (the GRPO log-prob convention).

Every function returns one value per batch row (shape ``[B]``) in float32.
"""
from __future__ import annotations

import abc
import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _mean_over_rows(values: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B]: mean over every non-batch dim (a [B] input is returned as is)."""
    if values.dim() <= 1:
        return values
    return values.mean(dim=tuple(range(1, values.dim())))


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """Log-density of ``x`` under ``N(mean, std^2)`` per element, averaged over non-batch dims.

    x, mean: [B, ...]; std: broadcastable to x (e.g. [B, 1, 1, 1] or a float), must be > 0.
    Returns [B] float32: ``mean(-(x - mean)^2 / (2 std^2) - log(std) - 0.5 log(2 pi))``.
    """
    x = x.float()
    mean = mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    log_density = -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - _HALF_LOG_2PI
    return _mean_over_rows(log_density.expand_as(x))


def gaussian_kl_equal_std(
    mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """KL(N(mean_a, std^2) || N(mean_b, std^2)) per element, averaged over non-batch dims.

    mean_a, mean_b: [B, ...]; std: broadcastable to them, > 0.
    Returns [B] float32: ``mean((mean_a - mean_b)^2 / (2 std^2))``.
    """
    mean_a = mean_a.float()
    mean_b = mean_b.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean_a.device)
    kl = (mean_a - mean_b) ** 2 / (2.0 * std**2)
    return _mean_over_rows(kl.expand_as(mean_a))


def per_row(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A float, a 0-dim tensor or a [B] tensor -> float32 [B, 1, ..., 1] broadcastable to ``like``."""
    batch = like.shape[0]
    column_shape = (batch,) + (1,) * (like.dim() - 1)
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.dim() == 0:
        return value.expand(column_shape)
    if value.shape != (batch,):
        raise ValueError(
            f"a per-row schedule value must be a float or a tensor of shape [{batch}], "
            f"got shape {tuple(value.shape)}"
        )
    return value.view(column_shape)


def levels_at(
    levels: torch.Tensor, step: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the level of each row's step and of the next step.

    levels: [T+1] schedule; step: [B] long step indices in [0, T-1].
    Returns (levels[step], levels[step + 1]), each [B] float32 on ``device``.
    """
    if levels.dim() != 1 or levels.numel() < 2:
        raise ValueError(f"levels must be a [T+1] tensor with T >= 1, got shape {tuple(levels.shape)}")
    step = torch.as_tensor(step, device=device).long().reshape(-1)
    num_steps = levels.numel() - 1
    if step.numel() and (int(step.min()) < 0 or int(step.max()) >= num_steps):
        raise ValueError(
            f"step must lie in [0, {num_steps - 1}] for a {num_steps}-step schedule, "
            f"got values in [{int(step.min())}, {int(step.max())}]"
        )
    levels = levels.to(device=device, dtype=torch.float32)
    return levels[step], levels[step + 1]


class GaussianKernel(abc.ABC):
    """Base of the stochastic transition kernels: x_next ~ N(mean, std^2) per element.

    Subclasses implement :meth:`ode_step` and :meth:`sde_mean_std`; sampling and the log-prob are
    shared here so that the log-prob of training is computed exactly as at sampling time.
    Shapes: x, model_output, noise [B, C, H, W]; levels [T+1]; step [B] long.
    """

    eta: float

    @abc.abstractmethod
    def ode_step(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic step -> x_next [B, C, H, W] float32."""

    @abc.abstractmethod
    def sde_mean_std(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean [B, C, H, W], std [B, 1, 1, 1]), float32."""

    @abc.abstractmethod
    def predict_x0(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        """Clean-sample estimate [B, C, H, W] at each row's step (for previews)."""

    def _check_stochastic(self) -> None:
        if self.eta <= 0:
            raise ValueError(
                f"eta must be > 0 for a stochastic kernel (got eta={self.eta}); "
                "with eta=0 use ode_step, the log-prob of a deterministic step is undefined"
            )

    def _mean_std_checked(
        self, x: torch.Tensor, model_output: torch.Tensor, levels: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_stochastic()
        mean, std = self.sde_mean_std(x, model_output, levels, step)
        if not bool((std > 0).all()):
            rows = torch.as_tensor(step).reshape(-1).cpu()
            bad = rows[(std.reshape(-1) <= 0).cpu()].unique().tolist()
            raise ValueError(
                f"the SDE std is 0 at step(s) {bad}: these steps are deterministic "
                "(e.g. DDIM with a final alpha_bar of 1.0), keep them out of the SDE window"
            )
        return mean, std

    def sde_step(
        self,
        x: torch.Tensor,
        model_output: torch.Tensor,
        levels: torch.Tensor,
        step: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``x_next = mean + std * noise`` -> (x_next [B, C, H, W] float32, log_prob [B]).

        ``noise`` is standard normal, drawn by the caller. The log-prob is taken at the detached
        sample (the same number :meth:`log_prob` gives for it). With ``eta == 0`` the step is the
        deterministic mean (a diagnostic: all children of a node coincide) and the log-prob is
        reported as 0; :meth:`log_prob` refuses such edges, so they cannot be trained on.
        """
        if self.eta == 0:
            mean, _ = self.sde_mean_std(x, model_output, levels, step)
            return mean, torch.zeros(mean.shape[0], device=mean.device)
        mean, std = self._mean_std_checked(x, model_output, levels, step)
        x_next = mean + std * noise.float()
        return x_next, gaussian_log_prob(x_next.detach(), mean, std)

    def log_prob(
        self,
        x_next: torch.Tensor,
        x: torch.Tensor,
        model_output: torch.Tensor,
        levels: torch.Tensor,
        step: torch.Tensor,
    ) -> torch.Tensor:
        """Log-prob [B] of a given transition x -> x_next under (new) model outputs.

        Gradients flow through ``model_output`` (via the mean), not through ``x_next``.
        """
        mean, std = self._mean_std_checked(x, model_output, levels, step)
        return gaussian_log_prob(x_next.detach(), mean, std)
