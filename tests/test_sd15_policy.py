"""StableDiffusionPolicy (SD1.x, DDIM) on the tiny random-weight pipeline (offline, CPU)."""
import json

import pytest
import torch

from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.kernels import DDIMKernel
from treegrpo.policies import StableDiffusionPolicy
from treegrpo.samplers import TreeSampler
from treegrpo.schedules import BranchPlan


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd15"])["sd15"]


def test_levels_timesteps_and_ddim_ode_match_diffusers(tiny_sd15):
    policy = StableDiffusionPolicy(str(tiny_sd15), resolution=32)
    levels = policy.noise_levels(4)
    scheduler = policy.pipe.scheduler
    scheduler.set_timesteps(4)
    assert levels.shape == (5,)
    assert policy.timesteps_of(levels[:4]).tolist() == scheduler.timesteps.tolist()
    assert levels[-1] == pytest.approx(float(scheduler.alphas_cumprod[0]))  # set_alpha_to_one=False
    # one deterministic step of ours equals DDIMScheduler.step(eta=0) on the same model output
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = policy.encode_prompts(["a cat"])
    out = policy.model_output(x, levels[:1], cond)
    ours = DDIMKernel(eta=1.0).ode_step(x, out, levels, torch.tensor([0]))
    theirs = scheduler.step(out, scheduler.timesteps[0], x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_sd15_tree_nfe_and_lora_training(tiny_sd15, tmp_path):
    policy = StableDiffusionPolicy(str(tiny_sd15), resolution=32, lora=dict(r=4))
    rollout = TreeSampler(num_steps=4, guidance_scale=3.0).sample(
        policy, DDIMKernel(eta=1.0), ["a cat"], BranchPlan(1, 2, 2), torch.Generator().manual_seed(0))
    assert rollout.nfe == 2 * (1 + (1 + 2) + 4 * 1)
    assert rollout.images.shape == (4, 3, 32, 32) and torch.isfinite(rollout.images).all()
    config = tmp_path / "sd15_tiny.py"
    config.write_text(f"""
policy = dict(type='StableDiffusionPolicy', model_path='{tiny_sd15}', resolution=32, lora=dict(r=4))
kernel = dict(type='DDIMKernel', eta=1.0)
schedule = dict(type='RandomWindow', depth=2, k=2)
sampler = dict(type='TreeSampler', num_steps=4, guidance_scale=2.0)
advantage = dict(type='TreeBackup')
reward = dict(type='JPEGCompressibility')
loss = dict(type='GRPOClipLoss', clip_range=0.2, beta=0.05)
train_dataset = dict(type='PromptList', prompts=['a red circle', 'a blue square'])
optimizer = dict(type='AdamW', lr=1e-2)
max_iters = 2
prompts_per_iter = 2
hooks = [dict(type='LoggerHook')]
""")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in records)
    assert records[0]["losses/kl"] == 0.0 and records[0]["losses/onpolicy_ratio_max_dev"] < 1e-5
    torch.manual_seed(0)
    initial = StableDiffusionPolicy(str(tiny_sd15), resolution=32, lora=dict(r=4)).trainable_state_dict()
    trained = runner.policy.trainable_state_dict()
    assert set(trained) == set(initial) and all("lora" in k for k in trained)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)
