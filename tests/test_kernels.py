"""Transition kernels: reference schedulers, closed forms, hand-computed numbers, errors."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from treegrpo.kernels import (
    DDIMKernel,
    FlowMatchingKernel,
    ddim_mean_std,
    ddim_ode_step,
    flow_ode_step,
    flow_sde_mean_std,
    gaussian_kl_equal_std,
    gaussian_log_prob,
    v_to_eps,
)
from treegrpo.registry import KERNELS, build

SHAPE = (3, 4, 8, 8)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _flow_levels(num_steps: int = 10, shift: float = 3.0) -> torch.Tensor:
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(num_steps)
    return sched.sigmas.float()


def _ddim_scheduler(num_steps: int, prediction_type: str = "epsilon") -> DDIMScheduler:
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(num_steps)
    return sched


def _ddim_levels(sched: DDIMScheduler) -> torch.Tensor:
    """[T+1] alpha_bar of each timestep, then the final alpha_bar (the scheduler's prev rule)."""
    values = [sched.alphas_cumprod[int(t)] for t in sched.timesteps]
    return torch.stack(values + [sched.final_alpha_cumprod]).float()


def _steps(value: int, batch: int = SHAPE[0]) -> torch.Tensor:
    return torch.full((batch,), value, dtype=torch.long)


# --- reference schedulers -------------------------------------------------------------------
def test_flow_ode_step_matches_diffusers_euler():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(8)
    levels = sched.sigmas.clone()
    kernel = FlowMatchingKernel()
    x = _rand(*SHAPE, seed=1)
    for i, t in enumerate(sched.timesteps):
        v = _rand(*SHAPE, seed=10 + i)
        expected = sched.step(v, t, x).prev_sample
        ours = kernel.ode_step(x, v, levels, _steps(i))
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            flow_ode_step(x, v, float(levels[i]), float(levels[i + 1])), expected, rtol=0, atol=1e-6
        )
        x = expected
    assert float(levels[-1]) == 0.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_ode_step_matches_diffusers_ddim(prediction_type):
    sched = _ddim_scheduler(10, prediction_type)
    levels = _ddim_levels(sched)
    kernel = DDIMKernel(eta=1.0, prediction_type=prediction_type)
    step_ratio = 1000 // 10
    x = _rand(*SHAPE, seed=2)
    for i, t in enumerate(sched.timesteps):  # includes the last timestep (prev < 0 -> final)
        out = _rand(*SHAPE, seed=20 + i)
        expected = sched.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(kernel.ode_step(x, out, levels, _steps(i)), expected, rtol=1e-5, atol=1e-5)
        if prediction_type == "epsilon":
            prev = int(t) - step_ratio
            a = sched.alphas_cumprod[int(t)]
            a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
            torch.testing.assert_close(
                ddim_ode_step(x, out, float(a), float(a_prev)), expected, rtol=1e-5, atol=1e-5
            )
        x = expected
    assert float(levels[-1]) == 1.0


def test_ddim_sde_step_matches_diffusers_ddpm_noise():
    """eta=1 with the same noise gives diffusers' DDIM sample (mean + sigma_t * noise)."""
    sched = _ddim_scheduler(10)
    levels = _ddim_levels(sched)
    kernel = DDIMKernel(eta=1.0)
    x = _rand(*SHAPE, seed=3)
    for i in (0, 4, 8):
        t = sched.timesteps[i]
        eps, noise = _rand(*SHAPE, seed=30 + i), _rand(*SHAPE, seed=40 + i)
        expected = sched.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        ours, _ = kernel.sde_step(x, eps, levels, _steps(i), noise)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


# --- log-probs --------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [FlowMatchingKernel(eta=0.7), DDIMKernel(eta=1.0)])
def test_sde_log_prob_equals_torch_normal(kernel):
    levels = _flow_levels() if isinstance(kernel, FlowMatchingKernel) else _ddim_levels(_ddim_scheduler(10))
    x, out, noise = _rand(*SHAPE, seed=4), _rand(*SHAPE, seed=5), _rand(*SHAPE, seed=6)
    step = torch.tensor([0, 2, 5])
    x_next, log_prob = kernel.sde_step(x, out, levels, step, noise)
    mean, std = kernel.sde_mean_std(x, out, levels, step)
    assert mean.shape == SHAPE and std.shape == (3, 1, 1, 1) and log_prob.shape == (3,)
    expected = torch.distributions.Normal(mean, std).log_prob(x_next).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected, rtol=1e-6, atol=1e-6)
    # re-evaluation of the sampled transition gives exactly the sampling log-prob (ratio 1)
    assert torch.equal(kernel.log_prob(x_next, x, out, levels, step), log_prob)


def test_gaussian_functions_hand_numbers():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    mean = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    std = torch.tensor([[0.5], [2.0]])
    c = 0.5 * math.log(2 * math.pi)
    row0 = ((-1 / (2 * 0.25) - math.log(0.5) - c) + (-math.log(0.5) - c)) / 2
    row1 = ((-math.log(2.0) - c) + (-1 / 8 - math.log(2.0) - c)) / 2
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), torch.tensor([row0, row1]))
    torch.testing.assert_close(
        gaussian_kl_equal_std(x, mean, std), torch.tensor([(2.0 + 0.0) / 2, (0.0 + 1 / 8) / 2])
    )


def test_log_prob_gradient_flows_to_model_output_hand_value():
    """d log_prob / d v = (x_next - mean) / std^2 * c * dt / n with c = 1 + s^2 (1-sigma)/(2 sigma)."""
    levels = torch.tensor([1.0, 0.6, 0.4, 0.0])
    kernel = FlowMatchingKernel(eta=0.5)
    x = torch.ones(1, 1, 1, 2)
    v = torch.full((1, 1, 1, 2), 0.5, requires_grad=True)
    x_next = torch.tensor([[[[0.9, 0.7]]]])
    kernel.log_prob(x_next, x, v, levels, torch.tensor([1])).sum().backward()
    s2 = 0.25 * 0.6 / 0.4
    std2 = s2 * 0.2
    c = 1 + s2 * 0.4 / 1.2
    expected = torch.tensor([(0.9 - 0.825), (0.7 - 0.825)]) / std2 * c * (-0.2) / 2
    torch.testing.assert_close(v.grad.flatten(), expected)


# --- closed forms and hand numbers -----------------------------------------------------------
def test_flow_sde_hand_computed_scalars():
    x, v, sigma, sigma_next, eta = 1.0, 0.5, 0.6, 0.4, 0.5
    s = eta * math.sqrt(sigma / (1 - sigma))
    dt = sigma_next - sigma
    mean_hand = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std_hand = s * math.sqrt(-dt)
    assert mean_hand == pytest.approx(0.825) and std_hand == pytest.approx(math.sqrt(0.075))
    mean, std = flow_sde_mean_std(
        torch.full((2, 1, 1, 1), x), torch.full((2, 1, 1, 1), v), sigma, sigma_next, eta, sigma_max=0.9
    )
    torch.testing.assert_close(mean, torch.full((2, 1, 1, 1), mean_hand))
    torch.testing.assert_close(std, torch.full((2, 1, 1, 1), std_hand))


def test_ddim_hand_computed_scalars():
    x, eps, a, a_prev, eta = 1.0, 0.5, 0.5, 0.8, 1.0
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    assert sigma_t == pytest.approx(math.sqrt(0.15))
    mean_hand = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma_t**2) * eps
    mean, std = ddim_mean_std(torch.full((1, 1, 2, 2), x), torch.full((1, 1, 2, 2), eps), a, a_prev, eta)
    torch.testing.assert_close(mean, torch.full((1, 1, 2, 2), mean_hand))
    torch.testing.assert_close(std, torch.full((1, 1, 1, 1), sigma_t))


def test_v_prediction_conversion_hand_numbers():
    x = torch.full((1, 1, 1, 1), 2.0)
    v = torch.full((1, 1, 1, 1), 0.5)
    assert v_to_eps(x, v, 0.64).item() == pytest.approx(0.8 * 0.5 + 0.6 * 2.0)  # 1.6
    levels = torch.tensor([0.64, 0.81, 1.0])
    ours = DDIMKernel(eta=0.0, prediction_type="v_prediction").ode_step(x, v, levels, torch.tensor([0]))
    assert ours.item() == pytest.approx(ddim_ode_step(x, torch.full_like(x, 1.6), 0.64, 0.81).item())


@pytest.mark.parametrize("kernel_cls", [FlowMatchingKernel, DDIMKernel])
def test_tiny_eta_recovers_ode_step(kernel_cls):
    levels = _flow_levels() if kernel_cls is FlowMatchingKernel else _ddim_levels(_ddim_scheduler(10))
    x, out = _rand(*SHAPE, seed=7), _rand(*SHAPE, seed=8)
    step = torch.tensor([0, 4, 9])
    mean, std = kernel_cls(eta=1e-6).sde_mean_std(x, out, levels, step)
    ode = kernel_cls(eta=1e-6).ode_step(x, out, levels, step)
    torch.testing.assert_close(mean, ode, rtol=1e-5, atol=1e-5)
    assert float(std.max()) < 1e-5
    # eta = 0 exactly: std 0, mean = ODE; sde_step ignores the noise (log-prob reported as 0)
    # and re-evaluating a log-prob (training) is refused
    zero = kernel_cls(eta=0.0)
    mean0, std0 = zero.sde_mean_std(x, out, levels, step)
    assert torch.equal(std0, torch.zeros(3, 1, 1, 1))
    torch.testing.assert_close(mean0, zero.ode_step(x, out, levels, step))
    sample0, log_prob0 = zero.sde_step(x, out, levels, step, torch.randn(SHAPE))
    assert torch.equal(sample0, mean0) and torch.equal(log_prob0, torch.zeros(3))
    with pytest.raises(ValueError, match="eta must be > 0"):
        zero.log_prob(x, x, out, levels, step)


@pytest.mark.parametrize("kernel_cls", [FlowMatchingKernel, DDIMKernel])
def test_empirical_moments_match_closed_form(kernel_cls):
    flow = kernel_cls is FlowMatchingKernel
    levels = torch.tensor([1.0, 0.75, 0.5, 0.0] if flow else [0.3, 0.6, 0.9, 1.0])
    shape = (2, 1, 400, 250)  # 200k elements
    x = torch.cat([torch.full((1, 1, 400, 250), 1.0), torch.full((1, 1, 400, 250), -0.5)])
    out = torch.full(shape, 0.5)
    step = torch.tensor([0, 1])
    kernel = kernel_cls(eta=0.8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    x_next, _ = kernel.sde_step(x, out, levels, step, noise)
    mean, std = kernel.sde_mean_std(x, out, levels, step)
    n = 200_000
    for row in range(2):
        sample = x_next[row].flatten().double()
        assert abs(sample.mean().item() - mean[row, 0, 0, 0].item()) < 5 * std[row].item() / math.sqrt(n)
        assert sample.std().item() == pytest.approx(std[row].item(), rel=0.01)


@pytest.mark.parametrize("kernel_cls", [FlowMatchingKernel, DDIMKernel])
def test_mixed_steps_equal_rows_alone(kernel_cls):
    levels = _flow_levels() if kernel_cls is FlowMatchingKernel else _ddim_levels(_ddim_scheduler(10))
    kernel = kernel_cls(eta=0.9)
    shape = (4, 2, 4, 4)
    x, out, noise = _rand(*shape, seed=11), _rand(*shape, seed=12), _rand(*shape, seed=13)
    step = torch.tensor([0, 3, 7, 8])
    x_next, log_prob = kernel.sde_step(x, out, levels, step, noise)
    ode = kernel.ode_step(x, out, levels, step)
    for row in range(4):
        sl = slice(row, row + 1)
        xn, lp = kernel.sde_step(x[sl], out[sl], levels, step[sl], noise[sl])
        torch.testing.assert_close(x_next[sl], xn, rtol=0, atol=0)
        torch.testing.assert_close(log_prob[sl], lp, rtol=0, atol=1e-7)
        torch.testing.assert_close(ode[sl], kernel.ode_step(x[sl], out[sl], levels, step[sl]), rtol=0, atol=0)


def test_children_of_one_parent_differ_only_by_noise():
    levels = _flow_levels()
    kernel = FlowMatchingKernel(eta=0.7)
    x, v = _rand(1, 2, 4, 4, seed=14), _rand(1, 2, 4, 4, seed=15)
    k = 3
    noise = _rand(k, 2, 4, 4, seed=16)
    parents = x.repeat(k, 1, 1, 1), v.repeat(k, 1, 1, 1)
    x_next, log_prob = kernel.sde_step(*parents, levels, _steps(2, k), noise)
    mean, std = kernel.sde_mean_std(x, v, levels, _steps(2, 1))
    torch.testing.assert_close(x_next, mean + std * noise)
    assert len(set(log_prob.tolist())) == k


def test_sigma_one_at_step_zero_gives_finite_std():
    levels = _flow_levels(10, shift=3.0)
    assert float(levels[0]) == 1.0
    x, v = _rand(2, 1, 2, 2, seed=17), _rand(2, 1, 2, 2, seed=18)
    mean, std = FlowMatchingKernel(eta=0.7).sde_mean_std(x, v, levels, _steps(0, 2))
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    s = 0.7 * math.sqrt(1.0 / (1.0 - float(levels[1])))
    expected = s * math.sqrt(1.0 - float(levels[1]))
    torch.testing.assert_close(std.flatten(), torch.full((2,), expected))


def test_float32_math_for_low_precision_inputs():
    levels = _flow_levels()
    x, v = _rand(*SHAPE, seed=19).bfloat16(), _rand(*SHAPE, seed=20).bfloat16()
    kernel = FlowMatchingKernel()
    x_next, log_prob = kernel.sde_step(x, v, levels.double(), _steps(1), torch.randn(SHAPE).bfloat16())
    assert x_next.dtype == torch.float32 and log_prob.dtype == torch.float32
    mean, _ = kernel.sde_mean_std(x.float(), v.float(), levels, _steps(1))
    torch.testing.assert_close(kernel.sde_mean_std(x, v, levels, _steps(1))[0], mean)


# --- errors and registry ---------------------------------------------------------------------
def test_bad_arguments_raise_value_error_naming_the_key():
    with pytest.raises(ValueError, match="eta"):
        FlowMatchingKernel(eta=-0.1)
    with pytest.raises(ValueError, match="eta"):
        DDIMKernel(eta=1.5)
    with pytest.raises(ValueError, match="prediction_type.*epsilon.*v_prediction"):
        DDIMKernel(prediction_type="sample")
    levels = _flow_levels(4)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"step must lie in \[0, 3\]"):
        FlowMatchingKernel().ode_step(x, x, levels, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="step must lie"):
        FlowMatchingKernel().ode_step(x, x, levels, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="levels"):
        FlowMatchingKernel().ode_step(x, x, levels[None], torch.tensor([0, 0]))


def test_ddim_step_into_alpha_one_is_refused_as_sde():
    levels = torch.tensor([0.5, 0.9, 1.0])
    x = torch.zeros(2, 1, 2, 2)
    _, std = DDIMKernel().sde_mean_std(x, x, levels, torch.tensor([0, 1]))
    assert std[0].item() > 0 and std[1].item() == 0
    with pytest.raises(ValueError, match=r"std is 0 at step\(s\) \[1\]"):
        DDIMKernel().sde_step(x, x, levels, torch.tensor([0, 1]), torch.randn(2, 1, 2, 2))


def test_kernels_build_from_registry():
    flow = build(KERNELS, dict(type="FlowMatchingKernel", eta=0.3))
    ddim = build(KERNELS, dict(type="DDIMKernel", eta=0.5, prediction_type="v_prediction"))
    assert isinstance(flow, FlowMatchingKernel) and flow.eta == 0.3
    assert isinstance(ddim, DDIMKernel) and ddim.prediction_type == "v_prediction"


def test_predict_x0_inverts_the_forward_process():
    """x_t built from a known x0 and noise gives back x0 with the exact model output."""
    x0, eps = _rand(*SHAPE, seed=21), _rand(*SHAPE, seed=22)
    sigma = torch.tensor([0.9, 0.5, 0.2])
    x_t = (1 - sigma)[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    levels = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.0])
    got = FlowMatchingKernel(0.7).predict_x0(x_t, eps - x0, levels, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(got, x0, rtol=1e-5, atol=1e-5)
    alpha_bar = torch.tensor([0.3, 0.6, 0.9])
    x_t = alpha_bar.sqrt()[:, None, None, None] * x0 + (1 - alpha_bar).sqrt()[:, None, None, None] * eps
    ddim_levels = torch.tensor([0.3, 0.6, 0.9, 1.0])
    got = DDIMKernel(1.0).predict_x0(x_t, eps, ddim_levels, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(got, x0, rtol=1e-5, atol=1e-5)
