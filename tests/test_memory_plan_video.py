"""tools/memory_plan.py for Wan (video latents): token counts by hand, parameter counts of the tiny
Wan transformer by hand, and the Wan 2.1 hub configs' sizes."""
import pytest
from mmengine.config import Config

from tools.make_tiny_models import main as make_tiny
from tools.memory_plan import KNOWN_MODELS, build_component, make_plan
from treegrpo import memory_plan as mp


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "wan"])["wan"]


def wan_config(model_path, **policy) -> Config:
    return Config(dict(
        seed=0, policy={**dict(type="WanPolicy", model_path=str(model_path), height=16, width=16, num_frames=5,
                               max_sequence_length=8, lora=dict(r=4)), **policy},
        kernel=dict(type="FlowMatchingKernel", eta=0.7), schedule=dict(type="FixedWindow", start=0, depth=2, k=2),
        sampler=dict(type="TreeSampler", num_steps=3, guidance_scale=2.0), advantage=dict(type="TreeBackup"),
        update=dict(micro_batch_size=3), prompts_per_iter=2))


def test_video_tokens_by_hand():
    # Wan 2.1 at 33 frames 480x832: (33 - 1) / 4 + 1 = 9 latent frames of 60 x 104, patches 1 x 2 x 2
    assert mp.video_tokens(33, 480, 832, 4, 8, (1, 2, 2)) == (9, 9 * 30 * 52)
    assert mp.video_tokens(81, 480, 832, 4, 8, (1, 2, 2)) == (21, 21 * 30 * 52)
    assert mp.video_tokens(1, 64, 64, 4, 8, (1, 2, 2)) == (1, 16)  # one frame: an image
    assert mp.video_tokens(5, 16, 16, 4, 8, (1, 2, 2)) == (2, 2)


def test_tiny_wan_plan_by_hand(tiny_wan):
    plan = make_plan(wan_config(tiny_wan), gpus=1, strategy="ddp")
    # patch_embedding Conv3d(16, 24, (1, 2, 2)): 16*24*4 + 24 = 1560; condition embedder: time MLP
    # 32*24+24 + 24*24+24 = 1392, time_proj 24*144+144 = 3600, text MLP 32*24+24 + 24*24+24 = 1392;
    # per block: attn1 and attn2 4 x (24*24+24) + q/k RMSNorm 2 x 24 = 2448 each, affine norm2 48,
    # FFN 24*32+32 + 32*24+24 = 1592, scale_shift_table 6*24 = 144 -> 6680; proj_out 24*64+64 = 1600;
    # scale_shift_table 2*24 = 48
    assert plan["denoiser_parameters"] == 1560 + 1392 + 3600 + 1392 + 2 * 6680 + 1600 + 48 == 22952
    assert plan["trained_parameters"] == 2 * 8 * 4 * (24 + 24)  # r=4 on attn1 + attn2 to_q/k/v/out
    lines = {line["name"]: line for line in plan["lines"]}
    assert lines["denoiser, frozen"]["bytes"] >= 22952 * 4  # float32 weights (+ rotary buffers)
    assert plan["per_prompt_embedding_bytes"] == 8 * 32 * 4  # [max_sequence_length, text_dim] float32
    # 2 latent frames x 1 x 1 patches + 8 text tokens, 3 parents x 2 CFG rows, 2 blocks of width 24
    assert "6 rows x 10 tokens x 24 wide x 2 blocks" in lines["activations (estimate)"]["note"]
    assert lines["activations (estimate)"]["bytes"] == mp.activation_bytes(2, 24, 10, 6, 4, False)
    longer = make_plan(wan_config(tiny_wan, num_frames=9), gpus=1, strategy="ddp")  # 3 latent frames
    assert "6 rows x 11 tokens" in {line["name"]: line for line in longer["lines"]}["activations (estimate)"]["note"]


def test_wan21_hub_configs_sizes():
    sizes = {}
    for model in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"):
        denoiser = build_component(*KNOWN_MODELS[model]["transformer"])
        sizes[model] = sum(p.numel() for p in denoiser.parameters())
        assert len(mp.transformer_blocks(denoiser)) == {"1.3B": 30, "14B": 40}[model.split("-")[-2]]
    assert sizes == {"Wan-AI/Wan2.1-T2V-1.3B-Diffusers": 1_418_996_800,
                     "Wan-AI/Wan2.1-T2V-14B-Diffusers": 14_288_491_584}
