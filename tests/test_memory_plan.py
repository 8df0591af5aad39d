"""tools/memory_plan.py against a real run on the tiny SD3: the static lines (denoiser, trained
tensors, gradients, AdamW state, reference, text encoders, VAE, prompt embeddings) equal the bytes
of the live tensors exactly; the activation estimate is within a factor 2 of the bytes autograd
saves for backward in one parent micro-batch forward (checkpointing off; with checkpointing on
the saved tensors live inside torch.utils.checkpoint and are not measured here)."""
import pytest
import torch
from mmengine.config import Config

from tools.make_tiny_models import main as make_tiny
from tools.memory_plan import KNOWN_MODELS, build_component, main as memory_plan_main, make_plan
from treegrpo import memory_plan as mp
from treegrpo.runner import Runner


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3"])["sd3"]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: these runs switch mixed precision, so reset it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_config(model_path, trained: str, dtype: str) -> Config:
    policy = dict(type="SD3Policy", model_path=str(model_path), resolution=32, dtype=dtype)
    policy.update(lora=dict(r=4)) if trained == "lora" else policy.update(keep_reference=True)
    return Config(dict(
        seed=0, policy=policy, kernel=dict(type="FlowMatchingKernel", eta=0.7),
        schedule=dict(type="FixedWindow", start=0, depth=2, k=2),
        sampler=dict(type="TreeSampler", num_steps=3, guidance_scale=2.0),
        advantage=dict(type="TreeBackup"), reward=dict(type="Colorfulness"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05 if trained == "full" else 0.0),
        train_dataset=dict(type="PromptList", prompts=["a red cube", "a blue ball"]),
        update=dict(micro_batch_size=3), optimizer=dict(type="AdamW", lr=1e-4), max_iters=1,
        prompts_per_iter=2, hooks=[], mixed_precision="bf16" if dtype == "bfloat16" else "no"))


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_nbytes(module) -> int:
    return nbytes(list(module.parameters()) + list(module.buffers()))


def saved_activation_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs, without the
    storages of ``exclude`` (parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def measured(runner: Runner) -> dict[str, int]:
    """Live bytes per plan line after one iteration, plus the gradients of one more micro-batch."""
    policy = runner.policy
    trained = policy.trainable_parameters()
    denoiser = policy.denoiser
    frozen = [p for p in denoiser.parameters() if not p.requires_grad] + list(denoiser.buffers())
    cache = policy.__dict__["_embedding_cache"].entries  # CPU copies; the device holds one iteration's
    result = {
        "denoiser, frozen": nbytes(frozen),
        "trained tensors (float32)": nbytes(trained),
        "AdamW state (float32)": nbytes(t for s in runner.optimizer.state.values() for t in s.values()),
        "KL reference": module_nbytes(policy.reference_denoiser) if hasattr(policy, "reference_denoiser") else 0,
        "text_encoder": module_nbytes(policy.text_encoder), "text_encoder_2": module_nbytes(policy.text_encoder_2),
        "vae": module_nbytes(policy.vae), "prompt embeddings": nbytes(t for e in cache.values() for t in e.values()),
    }
    rows = 3  # micro_batch_size parents; CFG doubles the rows inside predict
    cond = policy.encode_prompts(["a red cube"] * rows)
    latents = torch.randn(rows, *policy.latent_shape)
    level = torch.full((rows,), 0.5)
    with runner.accelerator.autocast():
        out, result["activations"] = saved_activation_bytes(
            lambda: policy.predict(latents, level, cond, 2.0, model=runner.train_model), denoiser.parameters())
    out.float().square().mean().backward()
    result["gradients (float32)"] = nbytes(p.grad for p in trained)
    return result, len(cache)


@pytest.mark.parametrize("trained, dtype", [("lora", "bfloat16"), ("full", "float32")])
def test_static_lines_equal_live_bytes_of_a_tiny_sd3_run(trained, dtype, tiny_sd3, tmp_path,
                                                        fresh_accelerate_state):
    cfg = tiny_config(tiny_sd3, trained, dtype)
    runner = Runner(cfg, tmp_path)
    runner.train()
    live, cached = measured(runner)
    # the cache holds the 2 prompts and the negative prompt: the plan's default for 1 GPU with CFG
    result = make_plan(cfg, gpus=1, strategy="ddp")
    plan = {line["name"]: line["bytes"] for line in result["lines"]}
    assert cached == 3
    for name in ("denoiser, frozen", "trained tensors (float32)", "gradients (float32)", "AdamW state (float32)",
                 "KL reference", "text_encoder", "text_encoder_2", "vae", "prompt embeddings"):
        assert plan[name] == live[name], (name, plan[name], live[name])
    assert result["trained_parameters"] == sum(p.numel() for p in runner.policy.trainable_parameters())
    assert set(plan) == set(live) - {"activations"} | {"activations (estimate)"}
    if trained == "full":
        assert plan["KL reference"] > 0 and plan["denoiser, frozen"] == module_nbytes(runner.policy.denoiser) - \
            plan["trained tensors (float32)"]  # only buffers besides the trained weights
        # checkpointing off (the tiny config's default): estimate within a factor 2 of the saved bytes
        ratio = plan["activations (estimate)"] / live["activations"]
        print(f"activation estimate {plan['activations (estimate)']} / measured {live['activations']} = {ratio:.3f}")
        assert 0.5 <= ratio <= 2.0, ratio


def test_lora_count_matches_peft_on_the_meta_sd35_medium():
    from peft import LoraConfig

    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    denoiser = build_component(*KNOWN_MODELS["stabilityai/stable-diffusion-3.5-medium"]["transformer"])
    expected, tensors = mp.lora_size(denoiser, 32, targets)
    denoiser.requires_grad_(False)
    with torch.device("meta"):
        denoiser.add_adapter(LoraConfig(r=32, lora_alpha=64, target_modules=targets))
    adapters = [p for p in denoiser.parameters() if p.requires_grad]
    assert (sum(p.numel() for p in adapters), len(adapters)) == (expected, tensors) == (14_548_992, 296)


def test_real_configs_public_parameter_counts_and_sharding(capsys):
    full_ft = ["policy.lora=None", "policy.keep_reference=True", "prompts_per_iter=8"]
    sd35 = memory_plan_main(["configs/treegrpo_sd3_hps.py", "--gpus", "1"])
    assert sd35["denoiser_parameters"] == 2_243_171_520  # + 226M pos-embed buffer = the public 2.47B
    flux8 = memory_plan_main(["configs/treegrpo_flux_hps.py", "--gpus", "8", "--strategy", "fsdp",
                              "--cfg-options", *full_ft])
    flux8_ddp = memory_plan_main(["configs/treegrpo_flux_hps.py", "--gpus", "8", "--cfg-options", *full_ft])
    assert flux8["denoiser_parameters"] == flux8["trained_parameters"] == 11_901_408_320  # FLUX.1-dev 11.9B
    fsdp = {line["name"]: line["bytes"] for line in flux8["lines"]}
    ddp = {line["name"]: line["bytes"] for line in flux8_ddp["lines"]}
    for name in ("trained tensors (float32)", "gradients (float32)"):
        assert fsdp[name] == -(-ddp[name] // 8)  # sharded 8 ways
    assert fsdp["KL reference"] == ddp["KL reference"] > 0 and fsdp["text_encoder_2"] == ddp["text_encoder_2"]
    assert "DDP gradient buckets" in ddp and "FSDP unsharded blocks" in fsdp
    assert "total per GPU" in capsys.readouterr().out


def test_bad_input_is_refused_with_the_fix(tiny_sd3):
    cfg = tiny_config(tiny_sd3, "lora", "float32")
    with pytest.raises(ValueError, match="divisible by --gpus 3 .* prompts_per_iter=3"):
        make_plan(cfg, gpus=3, strategy="ddp")
    cfg.policy.model_path = "nowhere/unknown-model"
    with pytest.raises(ValueError, match="--cfg-options policy.model_path"):
        make_plan(cfg, gpus=1, strategy="ddp")
    with pytest.raises(ValueError, match="target_modules"):
        mp.lora_size(torch.nn.Sequential(torch.nn.Linear(2, 2)), 4, ["to_q"])
