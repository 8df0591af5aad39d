"""Transition kernels: ODE steps, SDE steps with Gaussian log-probs (pure functions + thin classes)."""
from .ddim import DDIMKernel, ddim_mean_std, ddim_ode_step, ddim_predict_x0, v_to_eps
from .flow import (FlowMatchingKernel, first_level_below_one, flow_ode_step, flow_predict_x0,
                   flow_sde_mean_std)
from .gaussian import GaussianKernel, gaussian_kl_equal_std, gaussian_log_prob, levels_at, per_row

__all__ = [
    "DDIMKernel",
    "FlowMatchingKernel",
    "GaussianKernel",
    "ddim_mean_std",
    "ddim_ode_step",
    "ddim_predict_x0",
    "first_level_below_one",
    "flow_ode_step",
    "flow_predict_x0",
    "flow_sde_mean_std",
    "gaussian_kl_equal_std",
    "gaussian_log_prob",
    "levels_at",
    "per_row",
    "v_to_eps",
]
