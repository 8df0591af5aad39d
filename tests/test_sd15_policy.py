"""StableDiffusionPolicy (SD1.x, DDIM) on the tiny random-weight pipeline (offline, CPU)."""
import json

import pytest
import torch
from conftest import write_run_config

from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.kernels import DDIMKernel, FlowMatchingKernel
from treegrpo.policies import StableDiffusionPolicy
from treegrpo.samplers import TreeSampler
from treegrpo.schedules import BranchPlan


KERNEL = dict(type="DDIMKernel", eta=1.0)


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
    config = write_run_config(
        tmp_path / "sd15_tiny.py", dict(type="StableDiffusionPolicy", model_path=str(tiny_sd15), resolution=32,
                                        lora=dict(r=4)), KERNEL,
        schedule=dict(type="RandomWindow", depth=2, k=2),
        sampler=dict(type="TreeSampler", num_steps=4, guidance_scale=2.0), reward=dict(type="JPEGCompressibility"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05), optimizer=dict(type="AdamW", lr=1e-2),
        max_iters=2, hooks=[dict(type="LoggerHook")])
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in records)
    assert records[0]["losses/kl"] == 0.0 and records[0]["losses/onpolicy_ratio_max_dev"] < 1e-5
    torch.manual_seed(0)
    initial = StableDiffusionPolicy(str(tiny_sd15), resolution=32, lora=dict(r=4)).trainable_state_dict()
    trained = runner.policy.trainable_state_dict()
    assert set(trained) == set(initial) and all("lora" in k for k in trained)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)


def _train_tiny_sd15(tiny_sd15, tmp_path, lora: dict | None, name: str):
    policy = dict(type="StableDiffusionPolicy", model_path=str(tiny_sd15), resolution=32, lora=lora,
                  keep_reference=True)
    config = write_run_config(tmp_path / f"{name}.py", policy, KERNEL,  # 1 iteration, checkpointed
                              schedule=dict(type="FixedWindow", start=1, depth=1, k=2),
                              sampler=dict(type="TreeSampler", num_steps=3))
    runner = train_main([str(config), "--work-dir", str(tmp_path / name)])
    return runner, tmp_path / name / "checkpoints" / "iter_1"


def _unet_args(policy):
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = policy.encode_prompts(["a red circle"])
    return (latents, torch.tensor([500])), dict(encoder_hidden_states=cond["prompt_embeds"], return_dict=False)


def test_sd15_lora_checkpoint_loads_into_a_stock_pipeline(tiny_sd15, tmp_path):
    from diffusers import StableDiffusionPipeline

    runner, ckpt = _train_tiny_sd15(tiny_sd15, tmp_path, dict(r=4, alpha=8), "lora")
    assert (ckpt / "lora" / "pytorch_lora_weights.safetensors").is_file()
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    args, kwargs = _unet_args(runner.policy)
    with torch.no_grad():
        base = stock.unet(*args, **kwargs)[0]
        stock.load_lora_weights(ckpt / "lora")
        loaded = stock.unet(*args, **kwargs)[0]
        trained = runner.policy.denoiser(*args, **kwargs)[0]
    assert not torch.allclose(base, trained)
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


def test_sd15_full_fine_tune_exports_a_diffusers_unet(tiny_sd15, tmp_path):
    from diffusers import UNet2DConditionModel

    runner, ckpt = _train_tiny_sd15(tiny_sd15, tmp_path, None, "full")
    assert not (ckpt / "lora").exists() and (ckpt / "unet" / "config.json").is_file()
    weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_ino == (ckpt / "model.safetensors").stat().st_ino  # a hard link, no copy
    exported = UNet2DConditionModel.from_pretrained(ckpt / "unet")
    base = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    args, kwargs = _unet_args(runner.policy)
    with torch.no_grad():
        trained = runner.policy.denoiser(*args, **kwargs)[0]
        assert not torch.allclose(base(*args, **kwargs)[0], trained)
        torch.testing.assert_close(exported(*args, **kwargs)[0], trained, rtol=1e-5, atol=1e-5)


def test_v_prediction_unet_needs_a_v_prediction_kernel(tiny_sd15, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "sd2_v")
    policy = StableDiffusionPolicy(str(tmp_path / "sd2_v"), resolution=32)
    assert policy.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="predicts 'v_prediction'.*prediction_type='v_prediction'"):
        policy.check_kernel(DDIMKernel(eta=1.0))
    with pytest.raises(ValueError, match="needs kernel type 'DDIMKernel'"):
        policy.check_kernel(FlowMatchingKernel(eta=0.7))
    kernel = DDIMKernel(eta=1.0, prediction_type="v_prediction")
    policy.check_kernel(kernel)
    rollout = TreeSampler(num_steps=3).sample(policy, kernel, ["a cat"], BranchPlan(0, 2, 2),
                                              torch.Generator().manual_seed(0))
    assert rollout.images.shape == (4, 3, 32, 32) and torch.isfinite(rollout.log_prob[1:]).all()


def test_full_export_copies_when_the_checkpoint_is_not_the_whole_model(tiny_sd15, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from treegrpo.policies.diffusers_common import export_full_model

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    state = unet.state_dict()
    first = sorted(state)[0]
    save_file({first: state[first].contiguous()}, str(tmp_path / "model.safetensors"))  # a subset only
    target = export_full_model(unet, tmp_path, "unet")
    weights = target / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_ino != (tmp_path / "model.safetensors").stat().st_ino
    reloaded = UNet2DConditionModel.from_pretrained(target).state_dict()
    assert all(torch.equal(reloaded[k], state[k]) for k in state)
