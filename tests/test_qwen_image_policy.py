"""QwenImagePolicy on the tiny random-weight Qwen-Image of tools/tiny_qwen_image.py (offline, CPU)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.make_tiny_models import main as make_tiny
from tools.tiny_qwen_image import TEMPLATE_PREFIX, byte_level_qwen_tokenizer
from tools.train import main as train_main
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.policies.flux import pack_latents, unpack_latents
from treegrpo.policies.qwen_image import QwenImagePolicy, norm_rescaled_cfg, pad_text, trim_text
from treegrpo.samplers import TreeSampler
from treegrpo.samplers.common import ode_integrate
from treegrpo.schedules import BranchPlan

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "_base_"
SEQ = 32  # text tokens kept per prompt in these tests


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "qwenimage"])["qwenimage"]


@pytest.fixture(scope="module")
def policy(tiny_qwen):
    return QwenImagePolicy(str(tiny_qwen), resolution=32, max_sequence_length=SEQ)


def test_tiny_tokenizer_has_the_pipelines_template_length(policy):
    """The system prefix of the template is exactly the pipeline's drop index (34 tokens, as with
    the real tokenizer); merges spell template words, other text falls back to byte tokens."""
    pipe = policy.pipe
    assert pipe.prompt_template_encode.split("{}")[0] == TEMPLATE_PREFIX
    tokenizer = byte_level_qwen_tokenizer()
    ids = tokenizer(TEMPLATE_PREFIX).input_ids
    assert len(ids) == pipe.prompt_template_encode_start_idx == 34
    assert tokenizer.convert_ids_to_tokens(ids[-3:]) == ["<|im_start|>", "user", "\u010a"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a red dog").input_ids)
    assert tokens == ["a", "\u0120re", "d", "\u0120d", "o", "g"]  # " re" from "relationships", " d" from "detailing"
    assert type(pipe.tokenizer).__name__ == "Qwen2Tokenizer"  # the saved folder loads as the real class


def test_pure_helpers_by_hand():
    uncond = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    cond = torch.tensor([[[0.0, 4.0], [0.0, 2.0]]])
    out = norm_rescaled_cfg(uncond, cond, 2.0)
    # token 0: g = (-3, 8), |g| = sqrt(73), rescaled to |c| = 4; token 1: g = (0, 3) -> (0, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([-3.0, 8.0]) * 4 / math.sqrt(73))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 2.0]))
    embeds, mask = pad_text(torch.ones(2, 3, 4), torch.tensor([[1, 1, 1], [1, 0, 0]]), 5)
    assert embeds.shape == (2, 5, 4) and embeds[:, 3:].abs().sum() == 0
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert pad_text(torch.ones(1, 3, 4), None, 2)[1].tolist() == [[1, 1]]  # cut, all valid
    kept, kept_mask = trim_text(embeds, mask)
    assert kept.shape == (2, 3, 4) and kept_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    kept, kept_mask = trim_text(embeds[:1], mask[:1])
    assert kept.shape == (1, 3, 4) and kept_mask is None  # all valid: no mask, as the pipeline


def test_interface_encoding_and_cfg_nfe(policy):
    pipe = policy.pipe
    assert policy.latent_shape == (16, 4, 4) and policy.image_seq_len == 4
    assert {"text_encoder", "vae", "denoiser"} <= {n for n, _ in policy.named_children()}
    cond = policy.encode_prompts(["a cat", "a red dog"])
    assert cond["prompt_embeds"].shape == (2, SEQ, 32) and cond["prompt_mask"].shape == (2, SEQ)
    # after the 34 dropped: the prompt's tokens ("a", "\u0120c", "a", "t"; 6 for "a red dog")
    # and the template's 5-token suffix (<|im_end|>, newline, <|im_start|>, assistant, newline)
    assert cond["prompt_mask"].sum(1).tolist() == [9, 11]
    theirs, _ = pipe.encode_prompt("a red dog", device="cpu", max_sequence_length=SEQ)
    torch.testing.assert_close(cond["prompt_embeds"][1, :11], theirs[0], rtol=1e-5, atol=1e-6)
    assert cond["prompt_embeds"][1, 11:].abs().sum() == 0

    levels = policy.noise_levels(4)
    config = pipe.scheduler.config
    fresh = type(pipe.scheduler).from_config(config)
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
    mu = calculate_shift(4, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
    fresh.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=mu)
    assert levels.shape == (5,) and torch.equal(levels, fresh.sigmas.float())
    assert float(levels[-2]) == pytest.approx(0.02)  # Qwen-Image's shift_terminal
    images = policy.decode(torch.randn(2, *policy.latent_shape))
    assert images.shape == (2, 3, 32, 32) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0

    nfe = {}
    for gs in (1.0, 4.0):
        rollout = TreeSampler(num_steps=3, guidance_scale=gs).sample(
            policy, FlowMatchingKernel(0.7), ["a cat", "a dog"], BranchPlan(1, 2, 2), torch.Generator().manual_seed(0))
        nfe[gs] = rollout.nfe
        assert rollout.images.shape == (8, 3, 32, 32) and torch.isfinite(rollout.images).all()
    assert nfe[1.0] == 2 * (1 + (1 + 2) + 4 * 0) and nfe[4.0] == 2 * nfe[1.0]


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_ode_and_decode_match_the_pipeline(policy, cfg):
    """A whole ODE run (true CFG with the norm rescale when cfg > 1) reproduces QwenImagePipeline's
    latents from the same noise, and the decoded images equal its images."""
    steps = 3
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    extra = dict(negative_prompt=" ", true_cfg_scale=cfg) if cfg > 1 else dict(true_cfg_scale=1.0)
    with torch.no_grad():
        images = policy.pipe(prompt="a red circle", num_inference_steps=steps, height=32, width=32,
                             max_sequence_length=SEQ, output_type="pt", latents=pack_latents(x), **extra).images
        latents = policy.pipe(prompt="a red circle", num_inference_steps=steps, height=32, width=32,
                              max_sequence_length=SEQ, output_type="latent", latents=pack_latents(x), **extra).images
        ours = ode_integrate(policy, FlowMatchingKernel(0.0), x, policy.encode_prompts(["a red circle"]),
                             policy.noise_levels(steps), range(steps), cfg)
        decoded = policy.decode(ours)
    torch.testing.assert_close(ours, unpack_latents(latents, 4, 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, images, rtol=1e-5, atol=1e-5)
    if cfg > 1:  # the guided run differs from the unguided one
        with torch.no_grad():
            plain = ode_integrate(policy, FlowMatchingKernel(0.0), x, policy.encode_prompts(["a red circle"]),
                                  policy.noise_levels(steps), range(steps), 1.0)
        assert not torch.allclose(plain, ours, atol=1e-3)


def write_config(tmp_path: Path, sampler: str) -> Path:
    config = tmp_path / f"{sampler}_qwen_tiny.py"
    config.write_text(f"""_base_ = ['{BASE}/models/qwenimage.py', '{BASE}/samplers/{sampler}.py',
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
            "policy.dtype=float32", "policy.lora.r=4", "policy.lora.alpha=8", "policy.gradient_checkpointing=False",
            f"policy.max_sequence_length={SEQ}", "schedule.start=0", "schedule.depth=2", "schedule.k=2"]


def check_lora_training(runner, model_path: Path, log: Path) -> None:
    """Finite losses, LoRA trained on both streams, every base weight unchanged."""
    records = [json.loads(line) for line in log.read_text().splitlines() if "losses/loss" in line]
    assert records and all(math.isfinite(r["losses/loss"]) for r in records)
    assert records[0]["losses/kl"] == 0.0  # reference = adapters off, identical before the first update
    torch.manual_seed(0)  # the runner seeds with the config seed before building the policy
    initial = QwenImagePolicy(str(model_path), resolution=32, lora=dict(r=4, alpha=8), max_sequence_length=SEQ)
    before, after = initial.trainable_state_dict(), runner.policy.trainable_state_dict()
    assert set(before) == set(after) and all("lora" in k for k in after)
    assert any("txt_mlp" in k for k in after) and any("add_q_proj" in k for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # LoRA weights trained
    frozen = {k: v for k, v in initial.denoiser.state_dict().items() if "lora" not in k}
    trained = runner.policy.denoiser.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in frozen.items())  # base weights unchanged


def test_treegrpo_lora_training_and_stock_pipeline_export(tiny_qwen, tmp_path):
    from diffusers import QwenImagePipeline

    config = write_config(tmp_path, "tree")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"), *tiny_options(tiny_qwen),
                         "max_iters=2", "sampler.num_steps=3", "sampler.guidance_scale=1.0"])
    assert type(runner.policy).__name__ == "QwenImagePolicy" and runner.iteration == 2
    check_lora_training(runner, tiny_qwen, tmp_path / "run" / "log.jsonl")

    lora_dir = tmp_path / "run" / "checkpoints" / "iter_2" / "lora"
    stock = QwenImagePipeline.from_pretrained(tiny_qwen)
    stock.set_progress_bar_config(disable=True)
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = runner.policy.encode_prompts(["a red circle"])
    level = torch.tensor([0.6])
    length = int(cond["prompt_mask"].sum())
    args = dict(hidden_states=pack_latents(x), timestep=level, img_shapes=[[(1, 2, 2)]],
                encoder_hidden_states=cond["prompt_embeds"][:, :length], return_dict=False)
    with torch.no_grad():
        base = unpack_latents(stock.transformer(**args)[0], 4, 4)
        stock.load_lora_weights(lora_dir)
        loaded = unpack_latents(stock.transformer(**args)[0], 4, 4)
        trained = runner.policy.model_output(x, level, cond)
    assert not torch.allclose(base, trained)  # training changed the output
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


def test_flat_grpo_lora_training_with_cfg(tiny_qwen, tmp_path):
    config = write_config(tmp_path, "flat")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"), *tiny_options(tiny_qwen),
                         "max_iters=1", "sampler.num_steps=3", "sampler.group_size=2", "sampler.guidance_scale=4.0"])
    assert type(runner.sampler).__name__ == "FlatSampler"
    check_lora_training(runner, tiny_qwen, tmp_path / "run" / "log.jsonl")


def test_constructor_errors(tiny_qwen, tmp_path):
    with pytest.raises(FileNotFoundError, match="make_tiny_models.py"):
        QwenImagePolicy(str(tmp_path / "no_model_here"))
    with pytest.raises(FileNotFoundError, match="policy.model_path"):
        QwenImagePolicy("not a hub id!")
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 16"):
        QwenImagePolicy(str(tiny_qwen), resolution=40)
    with pytest.raises(ValueError, match="max_sequence_length"):
        QwenImagePolicy(str(tiny_qwen), max_sequence_length=2048)
    with pytest.raises(ValueError, match="negative_prompt"):
        QwenImagePolicy(str(tiny_qwen), negative_prompt=None)


def test_memory_plan_and_fsdp_blocks(tiny_qwen, policy):
    from tools.memory_plan import main as memory_plan_main
    from treegrpo.distributed import fsdp_settings

    real = memory_plan_main(["configs/treegrpo_qwenimage_hps.py", "--gpus", "8", "--strategy", "fsdp"])
    lines = {line["name"]: line["bytes"] for line in real["lines"]}
    assert real["denoiser_parameters"] == 20_430_401_088  # Qwen-Image's 20B MMDiT
    # LoRA r64 per block: 8 attention linears 3072->3072 (64 * 6144 each) and 4 MLP linears
    # 3072<->12288 (64 * 15360 each), 60 blocks
    assert real["trained_parameters"] == 60 * (8 * 64 * 6144 + 4 * 64 * 15360) == 424_673_280
    assert "text_encoder" in lines and "vae" in lines and "text_encoder_2" not in lines
    assert real["per_prompt_embedding_bytes"] == 2 * 512 * (3584 + 1)  # bf16 embeddings + mask
    tiny = memory_plan_main(["configs/treegrpo_qwenimage_hps.py", "--cfg-options",
                             f"policy.model_path={tiny_qwen}", "policy.resolution=32"])
    assert tiny["denoiser_parameters"] == sum(p.numel() for n, p in policy.denoiser.named_parameters()
                                              if "lora" not in n)
    wrap = fsdp_settings({}, {"type": "QwenImagePolicy"})["wrap_classes"]
    assert {type(m).__name__ for m in policy.denoiser.modules()} >= set(wrap) == {"QwenImageTransformerBlock"}


def test_precomputed_embeddings_replace_the_text_encoder(tiny_qwen, policy, tmp_path):
    """tools/precompute_embeddings.py shards hold the padded embeddings and masks: a policy reading
    them runs the text encoder for no prompt and gets the same tensors."""
    from tools.precompute_embeddings import main as precompute

    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    precompute(["configs/treegrpo_qwenimage_hps.py", "--prompts", str(tmp_path / "prompts.txt"),
                "--out", str(tmp_path / "embeds"), "--cfg-options", f"policy.model_path={tiny_qwen}",
                "policy.resolution=32", "policy.dtype=float32", f"policy.max_sequence_length={SEQ}"])
    reader = QwenImagePolicy(str(tiny_qwen), resolution=32, max_sequence_length=SEQ,
                             embedding_dir=str(tmp_path / "embeds"))
    prompts = ["a blue square", " "]  # the negative prompt is always written
    ours, theirs = reader.encode_prompts(prompts), policy.encode_prompts(prompts)
    assert reader._embedding_cache.encoded == 0
    assert torch.equal(ours["prompt_mask"], theirs["prompt_mask"])
    torch.testing.assert_close(ours["prompt_embeds"], theirs["prompt_embeds"], rtol=0, atol=0)


def test_full_fine_tune_reference_and_export(tiny_qwen, tmp_path):
    """lora=None trains every transformer weight (float32), keeps a frozen reference for the KL
    term, and exports a transformer/ folder that QwenImageTransformer2DModel loads."""
    from diffusers import QwenImageTransformer2DModel

    full = QwenImagePolicy(str(tiny_qwen), resolution=32, max_sequence_length=SEQ, keep_reference=True)
    params = list(full.denoiser.parameters())
    assert full.trainable_parameters() == params and all(p.dtype == torch.float32 for p in params)
    assert not any(p.requires_grad for p in full.text_encoder.parameters())
    with torch.no_grad():
        params[0].add_(0.5)  # an "update"
    cond = full.encode_prompts(["a cat"])
    x, level = torch.randn(1, *full.latent_shape), torch.tensor([0.5])
    with torch.no_grad(), full.reference() as reference:
        before = full.model_output(x, level, cond, model=reference)
    with torch.no_grad():
        after = full.model_output(x, level, cond)
    assert not torch.allclose(before, after)  # the reference is the frozen copy
    full.save_export(tmp_path)
    loaded = QwenImageTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert torch.equal(next(loaded.parameters()), params[0].detach())
