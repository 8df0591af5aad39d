"""SD3Policy on the tiny random-weight pipeline of tools/make_tiny_models.py (offline, CPU)."""
import json

import pytest
import torch
from conftest import write_run_config

from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.policies import SD3Policy
from treegrpo.samplers import TreeSampler
from treegrpo.schedules import BranchPlan


KERNEL = dict(type="FlowMatchingKernel", eta=0.7)


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3"])["sd3"]


def _policy(tiny_sd3, alpha: int) -> dict:
    return dict(type="SD3Policy", model_path=str(tiny_sd3), resolution=32, lora=dict(r=4, alpha=alpha))


def test_sd3_policy_interface_and_cfg_nfe(tiny_sd3):
    policy = SD3Policy(str(tiny_sd3), resolution=32, lora=dict(r=4))
    assert policy.latent_shape == (16, 16, 16)
    children = dict(policy.named_children())  # so that policy.to(device) moves every frozen part
    assert children["text_encoder"] is policy.pipe.text_encoder and children["vae"] is policy.pipe.vae
    assert children["text_encoder_2"] is policy.pipe.text_encoder_2
    levels = policy.noise_levels(4)
    assert levels.shape == (5,) and levels[0] == 1.0 and levels[-1] == 0.0
    reference = type(policy.pipe.scheduler).from_config(policy.pipe.scheduler.config)
    reference.set_timesteps(4)
    torch.testing.assert_close(levels, reference.sigmas.float())  # the scheduler's shifted sigmas
    assert levels[1] > 0.75  # shift 3 keeps the first steps at high noise (linear would be 0.75)
    rollout = TreeSampler(num_steps=4, guidance_scale=2.0).sample(
        policy, FlowMatchingKernel(0.7), ["a cat", "a dog"], BranchPlan(1, 2, 2), torch.Generator().manual_seed(0))
    assert rollout.nfe == 2 * 2 * (1 + (1 + 2) + 4 * 1)  # CFG doubles every forward
    assert rollout.images.shape == (8, 3, 32, 32) and torch.isfinite(rollout.images).all()
    trainable = policy.trainable_parameters()
    assert trainable and all("lora" in n for n, p in policy.denoiser.named_parameters() if p.requires_grad)


def test_sd3_lora_training_changes_only_lora(tiny_sd3, tmp_path):
    config = write_run_config(
        tmp_path / "sd3_tiny.py", _policy(tiny_sd3, alpha=4), KERNEL,
        schedule=dict(type="FixedWindow", start=0, depth=2, k=2),
        sampler=dict(type="TreeSampler", num_steps=3, guidance_scale=1.0),
        advantage=dict(type="TreeBackup", weighting="prob"), reward=dict(type="JPEGCompressibility"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.1), optimizer=dict(type="AdamW", lr=1e-2),
        max_iters=2, hooks=[dict(type="LoggerHook"), dict(type="CheckpointHook", interval=2)])
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in records)
    assert records[0]["losses/kl"] == 0.0  # reference = adapters disabled, identical at first
    fresh = SD3Policy(str(tiny_sd3), resolution=32).denoiser.state_dict()
    trained = runner.policy.denoiser.state_dict()
    lora_keys = [k for k in trained if "lora" in k]
    base_keys = [k for k in fresh]
    assert lora_keys and all(k.replace(".base_layer", "") in fresh or k in fresh
                             for k in trained if "lora" not in k)
    saved = runner.policy.trainable_state_dict()
    assert set(saved) == {k for k in lora_keys}
    torch.manual_seed(0)  # the runner seeds with the config seed (0) before building the policy
    initial = SD3Policy(str(tiny_sd3), resolution=32, lora=dict(r=4, alpha=4)).trainable_state_dict()
    assert set(initial) == set(saved)
    assert any(not torch.equal(initial[k], saved[k]) for k in saved)  # LoRA weights trained
    for key in base_keys:  # base weights unchanged (LoRA-wrapped layers keep theirs in base_layer)
        wrapped = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        value = trained.get(key, trained.get(wrapped))
        assert torch.equal(value, fresh[key]), key


def test_missing_model_path_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_tiny_models.py"):
        SD3Policy(str(tmp_path / "no_model_here"))


def test_checkpoint_lora_loads_into_a_stock_pipeline(tiny_sd3, tmp_path):
    """The LoRA exported in a checkpoint reproduces the trained transformer in stock diffusers."""
    from diffusers import StableDiffusion3Pipeline

    config = write_run_config(tmp_path / "sd3_lora.py", _policy(tiny_sd3, alpha=8), KERNEL)  # 1 iteration, saved
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    lora_dir = tmp_path / "run" / "checkpoints" / "iter_1" / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, text_encoder_3=None, tokenizer_3=None)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = runner.policy.encode_prompts(["a red circle"])
    args = dict(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=cond["prompt_embeds"],
                pooled_projections=cond["pooled"], return_dict=False)
    with torch.no_grad():
        base = stock.transformer(**args)[0]
        stock.load_lora_weights(lora_dir)
        loaded = stock.transformer(**args)[0]
        trained = runner.policy.denoiser(**args)[0]
    assert not torch.allclose(base, trained)  # training changed the output
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


def test_prompt_embedding_cache(tiny_sd3):
    policy = SD3Policy(str(tiny_sd3), resolution=32)
    uncached = SD3Policy(str(tiny_sd3), resolution=32, cache_prompt_embeds=False)
    calls = []
    original = policy.pipe.encode_prompt
    policy.pipe.encode_prompt = lambda **kw: calls.append(kw["prompt"]) or original(**kw)
    first = policy.encode_prompts(["a cat", "a dog", "a cat"])
    second = policy.encode_prompts(["a dog", "a bird"])
    assert calls == [["a cat", "a dog"], ["a bird"]]  # each prompt encoded once
    expected = uncached.encode_prompts(["a cat", "a dog", "a cat"])
    for key in expected:
        torch.testing.assert_close(first[key], expected[key])
    torch.testing.assert_close(second["pooled"][0], expected["pooled"][1])


def test_sd3_lora_run_resumes_bit_identically(tiny_sd3, tmp_path):
    config = write_run_config(
        tmp_path / "sd3_resume.py", _policy(tiny_sd3, alpha=4), KERNEL,
        schedule=dict(type="RandomWindow", depth=1, k=2),
        sampler=dict(type="TreeSampler", num_steps=3, guidance_scale=2.0),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05),
        train_dataset=dict(type="PromptList", prompts=["a red circle", "a blue square", "a cat"]),
        optimizer=dict(type="AdamW", lr=1e-2), max_iters=3,
        hooks=[dict(type="LoggerHook"), dict(type="CheckpointHook", interval=1)])
    straight = train_main([str(config), "--work-dir", str(tmp_path / "a")])
    train_main([str(config), "--work-dir", str(tmp_path / "b"), "--cfg-options", "max_iters=1"])
    resumed = train_main([str(config), "--work-dir", str(tmp_path / "b"), "--resume", "auto"])
    assert resumed.iteration == 3
    a, b = straight.policy.trainable_state_dict(), resumed.policy.trainable_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line)["reward/mean"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("a", "b")]
    assert logs[0] == logs[1]


def test_sd3_ode_path_matches_the_pipelines_own_scheduler(tiny_sd3):
    """Every step of an ODE trajectory (levels, timestep fed to the transformer, Euler update)
    equals what StableDiffusion3Pipeline's scheduler does with the same model outputs."""
    policy = SD3Policy(str(tiny_sd3), resolution=32)
    scheduler = type(policy.pipe.scheduler).from_config(policy.pipe.scheduler.config)
    scheduler.set_timesteps(4)
    levels, kernel = policy.noise_levels(4), FlowMatchingKernel(eta=0.0)
    cond = policy.encode_prompts(["a red circle"])
    ours = theirs = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            out = policy.model_output(ours, levels[i].reshape(1), cond)
            stock_out = policy.denoiser(hidden_states=theirs, timestep=t.reshape(1), return_dict=False,
                                        encoder_hidden_states=cond["prompt_embeds"],
                                        pooled_projections=cond["pooled"])[0]
            torch.testing.assert_close(out, stock_out)
            ours = kernel.ode_step(ours, out, levels, torch.tensor([i]))
            theirs = scheduler.step(stock_out, t, theirs, return_dict=False)[0]
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_compiled_denoiser_keeps_names_and_outputs(tiny_sd3):
    torch.manual_seed(0)
    plain = SD3Policy(str(tiny_sd3), resolution=32, lora=dict(r=4))
    torch.manual_seed(0)
    compiled = SD3Policy(str(tiny_sd3), resolution=32, lora=dict(r=4), compile_denoiser=dict(backend="eager"))
    assert compiled.denoiser._compiled_call_impl is not None  # nn.Module.compile, in place
    assert set(compiled.trainable_state_dict()) == set(plain.trainable_state_dict())
    latents = torch.randn(2, *plain.latent_shape, generator=torch.Generator().manual_seed(0))
    cond, level = plain.encode_prompts(["a cat", "a dog"]), torch.tensor([0.7, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(compiled.model_output(latents, level, cond),
                                   plain.model_output(latents, level, cond))
    with pytest.raises(ValueError, match="compile_denoiser must be a bool or a dict"):
        SD3Policy(str(tiny_sd3), resolution=32, compile_denoiser="yes")


def test_gradient_checkpointing_keeps_the_lora_gradients(tiny_sd3):
    """Checkpointed blocks must still send gradients to the adapters (inputs need no grad)."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = SD3Policy(str(tiny_sd3), resolution=32, lora=dict(r=4), gradient_checkpointing=checkpointing)
        policy.denoiser.train()
        assert policy.denoiser.is_gradient_checkpointing == checkpointing
        latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
        policy.model_output(latents, torch.tensor([0.6, 0.6]), policy.encode_prompts(["a", "b"])).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in policy.denoiser.named_parameters() if "lora_B" in n})
    assert grads[1] and all(g is not None and g.abs().sum() > 0 for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad)
