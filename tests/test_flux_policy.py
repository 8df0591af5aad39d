"""FluxPolicy on the tiny random-weight FLUX pipeline of tools/make_tiny_models.py (offline, CPU)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import treegrpo.policies.flux  # noqa: F401  (registers FluxPolicy until policies/__init__ imports it)
from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.policies.flux import (FluxPolicy, dynamic_shift_mu, image_position_ids, pack_latents,
                                    unpack_latents)
from treegrpo.samplers import TreeSampler
from treegrpo.samplers.common import ode_integrate
from treegrpo.schedules import BranchPlan

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "_base_"
SEQ = 16  # T5 tokens in these tests


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "flux"])["flux"]


@pytest.fixture(scope="module")
def policy(tiny_flux):
    return FluxPolicy(str(tiny_flux), resolution=32, max_sequence_length=SEQ)


def test_packing_matches_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 4)
    packed = pack_latents(x)
    assert packed.shape == (2, 6, 64)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 4), rtol=0, atol=0)
    torch.testing.assert_close(packed[0, 1, :4], x[0, 0, 0:2, 2:4].flatten())  # patch (0, 1), channel 0
    torch.testing.assert_close(unpack_latents(packed, 6, 4), x, rtol=0, atol=0)
    ids = image_position_ids(6, 4)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1]]
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(1, 3, 2, "cpu", torch.float32))


def test_dynamic_shift_mu_by_hand():
    assert dynamic_shift_mu(256) == pytest.approx(0.5)
    assert dynamic_shift_mu(4096) == pytest.approx(1.15)
    assert dynamic_shift_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)  # 512px: 0.63
    assert dynamic_shift_mu(64) == pytest.approx(0.4675)  # the tiny model at 32px: 8x8 patches


def test_flux_policy_interface_and_cfg_nfe(tiny_flux, policy):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert policy.latent_shape == (16, 16, 16) and policy.image_seq_len == 64
    assert policy.guidance == 3.5
    # every network is a submodule, so policy.to(device) moves the text encoders too
    assert {"text_encoder", "text_encoder_2", "vae", "denoiser"} <= {n for n, _ in policy.named_children()}
    cond = policy.encode_prompts(["a cat", "a dog"])
    assert cond["prompt_embeds"].shape == (2, SEQ, 32) and cond["pooled"].shape == (2, 32)

    levels = policy.noise_levels(4)
    config = policy.pipe.scheduler.config
    fresh = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(64, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    fresh.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=mu)
    assert levels.dtype == torch.float32 and levels.shape == (5,)
    assert torch.equal(levels, fresh.sigmas.float())  # exactly FluxPipeline's schedule
    by_hand = [math.exp(0.4675) / (math.exp(0.4675) + 1 / t - 1) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    torch.testing.assert_close(levels, torch.tensor(by_hand), rtol=0, atol=1e-6)

    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = policy.model_output(x, levels[[1, 2]], cond)
        policy.guidance = 1.0
        other_guidance = policy.model_output(x, levels[[1, 2]], cond)
        policy.guidance = 3.5
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, other_guidance)  # the guidance embedding is fed
    images = policy.decode(x)
    assert images.shape == (2, 3, 32, 32) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0

    nfe = {}
    for gs in (1.0, 2.0):
        rollout = TreeSampler(num_steps=4, guidance_scale=gs).sample(
            policy, FlowMatchingKernel(0.7), ["a cat", "a dog"], BranchPlan(1, 2, 2),
            torch.Generator().manual_seed(0))
        nfe[gs] = rollout.nfe
        assert rollout.images.shape == (8, 3, 32, 32) and torch.isfinite(rollout.images).all()
    assert nfe[1.0] == 2 * (1 + (1 + 2) + 4 * 1) and nfe[2.0] == 2 * nfe[1.0]  # CFG doubles every forward


def test_timestep_guidance_and_ode_match_the_pipeline(policy):
    """The transformer gets exactly FluxPipeline's arguments, our ODE step equals the scheduler's
    step on the packed output, and a whole ODE run reproduces the pipeline's latents."""
    pipe, steps = policy.pipe, 3
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = policy.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: kwargs[k].clone() for k in ("timestep", "guidance")}),
        with_kwargs=True)
    try:
        with torch.no_grad():
            reference = pipe(prompt="a red circle", num_inference_steps=steps, height=32, width=32,
                             guidance_scale=3.5, max_sequence_length=SEQ, output_type="latent",
                             latents=pack_latents(x)).images
            cond = policy.encode_prompts(["a red circle"])
            levels = policy.noise_levels(steps)
            ours = ode_integrate(policy, FlowMatchingKernel(0.0), x, cond, levels, range(steps), 1.0)
    finally:
        hook.remove()
    pipeline_args, our_args = seen[:steps], seen[steps:]
    for theirs, mine in zip(pipeline_args, our_args):
        assert torch.equal(theirs["timestep"], mine["timestep"]) and torch.equal(theirs["guidance"], mine["guidance"])
    assert float(our_args[1]["timestep"]) == pytest.approx(float(levels[1]))
    torch.testing.assert_close(ours, unpack_latents(reference, 16, 16), rtol=1e-5, atol=1e-5)

    # one step: treegrpo's kernel on the unpacked output vs the scheduler on the packed one
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=dynamic_shift_mu(64))
    step = torch.tensor([1])
    with torch.no_grad():
        v = policy.model_output(x, levels[step], cond)
    ours = FlowMatchingKernel(0.7).ode_step(x, v, levels, step)
    scheduler.set_begin_index(1)
    theirs = scheduler.step(pack_latents(v), scheduler.timesteps[1], pack_latents(x), return_dict=False)[0]
    torch.testing.assert_close(ours, unpack_latents(theirs, 16, 16), rtol=1e-6, atol=1e-6)


def write_config(tmp_path: Path, sampler: str) -> Path:
    """A tiny TreeGRPO or flat GRPO config on the FLUX.1-dev base (model path set by the caller)."""
    config = tmp_path / f"{sampler}_flux_tiny.py"
    config.write_text(f"""_base_ = ['{BASE}/models/flux_dev.py', '{BASE}/samplers/{sampler}.py',
          '{BASE}/schedules/fixed_window.py', '{BASE}/default_runtime.py']
reward = dict(type='Colorfulness')
train_dataset = dict(type='PromptList', prompts=['a red circle', 'a blue square'])
optimizer = dict(lr=5e-2)
loss = dict(clip_range=0.2, beta=0.1)
prompts_per_iter = 2
hooks = [dict(type='LoggerHook'), dict(type='CheckpointHook', interval=1)]
""")
    return config


def tiny_options(model_path: Path) -> list[str]:
    return ["--cfg-options", f"policy.model_path={model_path}", "policy.resolution=32",
            "policy.dtype=float32", "policy.lora.r=4", "policy.lora.alpha=8",
            f"policy.max_sequence_length={SEQ}", "schedule.start=0", "schedule.depth=2", "schedule.k=2"]


def check_lora_training(runner, model_path: Path, log: Path) -> None:
    """Finite losses, LoRA trained, every base weight unchanged."""
    records = [json.loads(line) for line in log.read_text().splitlines() if "losses/loss" in line]
    assert records and all(math.isfinite(r["losses/loss"]) for r in records)
    assert records[0]["losses/kl"] == 0.0  # reference = adapters off, identical before the first update
    torch.manual_seed(0)  # the runner seeds with the config seed before building the policy
    initial = FluxPolicy(str(model_path), resolution=32, lora=dict(r=4, alpha=8), max_sequence_length=SEQ)
    before, after = initial.trainable_state_dict(), runner.policy.trainable_state_dict()
    assert set(before) == set(after) and all("lora" in k for k in after)
    assert any("single_transformer_blocks" in k for k in after)  # attn.to_q etc. match there too
    assert any(not torch.equal(before[k], after[k]) for k in after)  # LoRA weights trained
    frozen = {k: v for k, v in initial.denoiser.state_dict().items() if "lora" not in k}
    trained = runner.policy.denoiser.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in frozen.items())  # base weights unchanged


def test_treegrpo_lora_training_and_stock_pipeline_export(tiny_flux, tmp_path):
    from diffusers import FluxPipeline

    config = write_config(tmp_path, "tree")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"), *tiny_options(tiny_flux),
                         "max_iters=2", "sampler.num_steps=3"])
    assert type(runner.policy).__name__ == "FluxPolicy" and runner.iteration == 2
    check_lora_training(runner, tiny_flux, tmp_path / "run" / "log.jsonl")

    lora_dir = tmp_path / "run" / "checkpoints" / "iter_2" / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    stock = FluxPipeline.from_pretrained(tiny_flux)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = runner.policy.encode_prompts(["a red circle"])
    level = torch.tensor([0.6])
    args = dict(hidden_states=FluxPipeline._pack_latents(x, 1, 16, 16, 16), timestep=level,
                guidance=torch.tensor([3.5]), pooled_projections=cond["pooled"],
                encoder_hidden_states=cond["prompt_embeds"], txt_ids=torch.zeros(SEQ, 3),
                img_ids=FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32), return_dict=False)
    with torch.no_grad():
        base = FluxPipeline._unpack_latents(stock.transformer(**args)[0], 32, 32, 2)
        stock.load_lora_weights(lora_dir)
        loaded = FluxPipeline._unpack_latents(stock.transformer(**args)[0], 32, 32, 2)
        trained = runner.policy.model_output(x, level, cond)
    assert not torch.allclose(base, trained)  # training changed the output
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


def test_flat_grpo_lora_training(tiny_flux, tmp_path):
    config = write_config(tmp_path, "flat")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"), *tiny_options(tiny_flux),
                         "max_iters=1", "sampler.num_steps=3", "sampler.group_size=2"])
    assert type(runner.sampler).__name__ == "FlatSampler"
    check_lora_training(runner, tiny_flux, tmp_path / "run" / "log.jsonl")


def test_schnell_without_guidance_embedding(tiny_flux, tmp_path):
    """A transformer without guidance embedding (FLUX.1-schnell) ignores `guidance`; a static
    shift-1 scheduler gives the plain linear schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    dev = FluxPipeline.from_pretrained(tiny_flux)
    transformer = FluxTransformer2DModel.from_config({**dev.transformer.config, "guidance_embeds": False})
    schnell = FluxPipeline(**{**dev.components, "transformer": transformer,
                              "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0)})
    schnell.save_pretrained(tmp_path / "schnell")
    policy = FluxPolicy(str(tmp_path / "schnell"), resolution=32, guidance=3.5, max_sequence_length=SEQ)
    assert policy.guidance is None
    torch.testing.assert_close(policy.noise_levels(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    x = torch.randn(1, *policy.latent_shape)
    with torch.no_grad():
        out = policy.model_output(x, torch.tensor([1.0]), policy.encode_prompts(["a cat"]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_constructor_errors(tiny_flux, tmp_path):
    with pytest.raises(FileNotFoundError, match="make_tiny_models.py"):
        FluxPolicy(str(tmp_path / "no_model_here"))
    with pytest.raises(ValueError, match="resolution"):
        FluxPolicy(str(tiny_flux), resolution=30)  # not a multiple of 2 x vae_scale_factor = 4
    with pytest.raises(ValueError, match="guidance"):
        FluxPolicy(str(tiny_flux), resolution=32, guidance=None)  # FLUX.1-dev needs it
    with pytest.raises(ValueError, match="max_sequence_length"):
        FluxPolicy(str(tiny_flux), max_sequence_length=1024)
