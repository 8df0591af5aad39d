"""WanPolicy on the tiny random-weight Wan 2.1 pipeline of tools/tiny_wan.py (offline, CPU)."""
import re

import pytest
import torch

from conftest import read_log, write_run_config
from test_video_core import VideoBrightnessReward  # noqa: F401  (registers the video reward)
from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.policies import WanPolicy
from treegrpo.samplers.common import ode_integrate

SEQ = 16  # UMT5 tokens in these tests
SIZE = dict(height=16, width=16, num_frames=5, max_sequence_length=SEQ)


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return str(make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "wan"])["wan"])


@pytest.fixture(scope="module")
def policy(tiny_wan):
    return WanPolicy(tiny_wan, **SIZE)


def test_tiny_wan_round_trip(tiny_wan):
    from diffusers import WanPipeline

    from tools.tiny_wan import tiny_wan_pipeline

    built, loaded = tiny_wan_pipeline(0), WanPipeline.from_pretrained(tiny_wan)
    for name in ("transformer", "vae", "text_encoder"):
        a, b = getattr(built, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    ids = built.tokenizer(["a red cat."]).input_ids
    assert ids == loaded.tokenizer(["a red cat."]).input_ids and ids[0][-1] == 1  # ends with </s>
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"
    assert loaded.scheduler.config.flow_shift == 3.0


def test_interface_encoding_schedule_and_decode(tiny_wan, policy):
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert policy.latent_shape == (16, 2, 2, 2)  # (5 - 1) / 4 + 1 latent frames, 16 / 8 pixels
    cond = policy.encode_prompts(["a red circle", "a much longer prompt about a dog"])
    assert cond["prompt_embeds"].shape == (2, SEQ, 32)
    tokens = policy.pipe.tokenizer(["a red circle"]).input_ids[0]
    embeds = cond["prompt_embeds"][0]
    assert embeds[: len(tokens)].abs().sum(dim=1).min() > 0  # tokens under the mask are encoded
    assert torch.count_nonzero(embeds[len(tokens):]) == 0  # zero padding beyond the mask
    expected, _ = policy.pipe.encode_prompt(["a red circle"], do_classifier_free_guidance=False,
                                            max_sequence_length=SEQ)
    torch.testing.assert_close(cond["prompt_embeds"][:1], expected)
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(4)
    torch.testing.assert_close(policy.noise_levels(4), reference.sigmas.float())
    assert policy.noise_levels(4)[0] == 1 and policy.noise_levels(4)[-1] == 0
    frames = policy.decode(torch.randn(2, *policy.latent_shape))
    assert frames.shape == (2, 5, 3, 16, 16) and 0 <= frames.min() and frames.max() <= 1
    # CFG: one batch of 2B rows through the transformer, counted as 2B forwards
    before = policy.nfe
    policy.predict(torch.randn(3, *policy.latent_shape), torch.full((3,), 0.5),
                   policy.encode_prompts(["a", "b", "c"]), guidance_scale=4.0)
    assert policy.nfe - before == 6


def test_ode_path_matches_the_pipeline_with_an_euler_scheduler(tiny_wan, policy):
    """The policy's Euler ODE with CFG and a negative prompt equals WanPipeline run with
    FlowMatchEulerDiscreteScheduler(shift=3) from the same noise, and decodes to its frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    args = dict(prompt="a red circle", negative_prompt="ugly", guidance_scale=3.0, num_inference_steps=3,
                latents=noise, max_sequence_length=SEQ, height=16, width=16, num_frames=5)
    with torch.no_grad():
        expected = pipe(**args, output_type="latent").frames
        frames = pipe(**args, output_type="pt").frames
        policy.negative_prompt = "ugly"
        try:
            got = ode_integrate(policy, FlowMatchingKernel(0.7), noise, policy.encode_prompts(["a red circle"]),
                                policy.noise_levels(3), range(3), guidance_scale=3.0)
        finally:
            policy.negative_prompt = ""
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(policy.decode(got), frames, rtol=1e-4, atol=1e-4)


def _train(tiny_wan, tmp_path, sampler, advantage):
    policy = dict(type="WanPolicy", model_path=tiny_wan, lora=dict(r=4, alpha=4), **SIZE)
    config = write_run_config(
        tmp_path / "wan.py", policy, dict(type="FlowMatchingKernel", eta=0.8), sampler=sampler,
        advantage=dict(type=advantage), reward=dict(type="VideoBrightnessReward"),
        optimizer=dict(type="AdamW", lr=5e-2),
        hooks=[dict(type="LoggerHook", interval=1), dict(type="CheckpointHook", interval=1)])
    return train_main([str(config), "--work-dir", str(tmp_path / "run")])


@pytest.mark.parametrize("sampler,advantage", [
    (dict(type="TreeSampler", num_steps=2, guidance_scale=2.0), "TreeBackup"),
    (dict(type="FlatSampler", num_steps=2, group_size=2), "GroupNorm")])
def test_one_lora_iteration_changes_only_lora(tiny_wan, tmp_path, sampler, advantage):
    from diffusers import WanPipeline

    runner = _train(tiny_wan, tmp_path, sampler, advantage)
    record = read_log(tmp_path / "run")[-1]
    assert record["losses/onpolicy_ratio_max_dev"] < 1e-4
    trained = runner.policy.denoiser.state_dict()
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert lora and all(v.dtype == torch.float32 for v in lora.values())
    initial = WanPolicy(tiny_wan, lora=dict(r=4, alpha=4), **SIZE).denoiser.state_dict()
    assert any(not torch.equal(lora[k], initial[k]) for k in lora)
    base = WanPipeline.from_pretrained(tiny_wan).transformer.state_dict()
    frozen = {k.replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], base[k]) for k in base)


def test_exported_lora_loads_into_the_stock_pipeline(tiny_wan, tmp_path):
    from diffusers import WanPipeline

    runner = _train(tiny_wan, tmp_path, dict(type="TreeSampler", num_steps=2), "TreeBackup")
    lora_dir = tmp_path / "run" / "checkpoints" / "iter_1" / "lora"
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    stock = WanPipeline.from_pretrained(tiny_wan)
    x = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    cond = runner.policy.encode_prompts(["a red circle"])
    args = dict(hidden_states=x, timestep=torch.tensor([600.0]), encoder_hidden_states=cond["prompt_embeds"],
                return_dict=False)
    with torch.no_grad():
        base = stock.transformer(**args)[0]
        stock.load_lora_weights(lora_dir)
        loaded = stock.transformer(**args)[0]
        trained = runner.policy.model_output(x, torch.tensor([0.6]), cond)
    assert not torch.allclose(base, trained)
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("override,message", [
    (dict(num_frames=6), "policy.num_frames must be 1 + a multiple of 4"),
    (dict(height=12), "policy.height must be a positive multiple of 16"),
    (dict(shift=0), "policy.shift must be a number > 0"),
    (dict(max_sequence_length=0), "policy.max_sequence_length must be an int >= 1")])
def test_constructor_errors(tiny_wan, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WanPolicy(tiny_wan, **{**SIZE, **override})


def test_fsdp_wrap_class_occurs_in_the_wan_transformer(policy):
    from treegrpo.distributed import WRAP_CLASSES, check_wrap_classes

    assert WRAP_CLASSES["WanPolicy"] == ("WanTransformerBlock",)
    check_wrap_classes(policy.denoiser, list(WRAP_CLASSES["WanPolicy"]))
