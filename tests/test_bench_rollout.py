"""tools/bench_rollout.py on CPU: tiny SD3 / FLUX (random weights) and the toy policy, one iteration each."""
import json

import pytest
import torch

from tools import bench_models, bench_rollout
from tools.bench_rollout import flat_nfe, main, parse_args, tree_nfe

SMALL = ["--iters", "1", "--warmup", "0", "--prompts-per-iter", "2", "--k", "2", "--depth", "2",
         "--num-steps", "4", "--window-start", "1"]


def test_closed_forms_against_hand_counts():
    # 2 prompts, binary tree of depth 2 starting at step 1 of 4: prefix 1 + levels 1 + 2 + 4 leaves x 1 suffix
    assert tree_nfe(2, 2, 2, 1, 4) == (2 * (1 + 1 + 2 + 4 * 1), 2 * (1 + 2))
    assert tree_nfe(1, 3, 1, 0, 5) == (1 + 3 * 4, 1)
    assert flat_nfe(2, 4, 2, 1, 4) == (2 * 4 * 4, 2 * 4 * 2)
    # a one-step finish: 10 steps, window 2..4, 5 steps left -> 1
    assert tree_nfe(2, 2, 3, 2, 10, suffix_steps=1) == (2 * (2 + 1 + 2 + 4 + 8 * 1), 2 * 7)
    assert flat_nfe(2, 4, 3, 2, 10, suffix_steps=1) == (2 * 4 * (2 + 3 + 1), 2 * 4 * 3)
    assert tree_nfe(1, 2, 1, 0, 4, suffix_steps=9) == tree_nfe(1, 2, 1, 0, 4)  # capped at the steps left


def _check(results, nfe, edges, policy):
    assert results["device"]["type"] == "cpu" and results["memory_kind"] == "cpu_peak_rss"
    assert results["versions"]["torch"] == torch.__version__ and results["versions"]["diffusers"]
    assert results["shapes"] == "tiny" and results["dtype"] == "float32" and results["model"]["policy"] == policy
    assert results["config"]["images_per_prompt"] == 4 and results["config"]["window_start"] == 1
    for mode, r in results["modes"].items():
        seconds = r["seconds"]
        assert all(seconds[p] > 0 for p in ("sample", "reward", "advantage", "update"))
        assert seconds["total"] == pytest.approx(sum(seconds[p] for p in ("sample", "reward", "advantage", "update")))
        assert r["nfe_per_iter"] == {"sample": nfe[mode][0], "update": nfe[mode][1], "total": sum(nfe[mode])}
        assert r["nfe_closed_form"] == {"sample": nfe[mode][0], "update": nfe[mode][1]}
        assert r["nfe_per_second"]["total"] == pytest.approx(sum(nfe[mode]) / seconds["total"])
        assert r["nfe_per_second"]["sample"] == pytest.approx(nfe[mode][0] / seconds["sample"])
        assert r["images_per_iter"] == 2 * 4 and r["edges_per_iter"] == edges[mode]
        assert all(v > 10 for v in r["peak_memory_mib"].values())  # MiB of the process RSS
        assert r["trainable_parameters"] > 0 and all(torch.isfinite(torch.tensor(r["loss"])))
    ratio = results["modes"]["flat"]["seconds"]["total"] / results["modes"]["tree"]["seconds"]["total"]
    assert results["flat_over_tree"]["seconds_per_iter"] == pytest.approx(ratio)


def test_sd3_tiny_random_weights(tmp_path):
    out = tmp_path / "sd3.json"
    results = main(["--policy", "sd3", "--random-weights", "--shapes", "tiny", "--device", "cpu",
                    "--out", str(out), *SMALL])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    # tree: 2 x (1 + 1 + 2 + 4) sampling forwards, 2 x 3 parents; flat: 2 x 4 chains x 4 steps, x 2 edges
    _check(results, {"tree": (16, 6), "flat": (32, 16)}, {"tree": 12, "flat": 16}, "sd3")
    assert results["model"]["weights"] == "random" and results["model"]["lora"]["r"] == 32
    assert results["modes"]["tree"]["latent_shape"] == [16, 16, 16]
    assert results["modes"]["tree"]["trainable_parameters"] < results["modes"]["tree"]["denoiser_parameters"]


def test_flux_tiny_random_weights_samples_without_cfg(tmp_path):
    results = main(["--policy", "flux", "--random-weights", "--shapes", "tiny", "--device", "cpu",
                    "--out", str(tmp_path / "flux.json"), *SMALL])
    # FLUX.1-dev: guidance_scale 1, one forward per step (same counts as SD3 without CFG)
    nfe = {"tree": (16, 6), "flat": (32, 16)}
    assert nfe == {"tree": tree_nfe(2, 2, 2, 1, 4), "flat": flat_nfe(2, 4, 2, 1, 4)}
    _check(results, nfe, {"tree": 12, "flat": 16}, "flux")
    assert results["config"]["guidance_scale"] == 1.0 and results["model"]["lora"]["r"] == 64  # flux_dev.py
    assert results["model"]["builder"] == "tools/make_tiny_models.py tiny_flux_pipeline"
    for r in results["modes"].values():
        assert r["embedded_guidance"] == 3.5 and r["latent_shape"] == [16, 16, 16]  # 32px, VAE scale 2


def test_random_model_is_built_in_the_requested_dtype(tmp_path):
    from safetensors import safe_open

    bench_rollout.write_random_model("flux", "tiny", "bfloat16", "cpu", tmp_path / "flux")
    assert torch.get_default_dtype() == torch.float32  # restored
    for part in ("transformer", "text_encoder_2", "vae"):
        (weights,) = (tmp_path / "flux" / part).glob("*.safetensors")
        with safe_open(str(weights), framework="pt") as handle:
            assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}, part


def test_toy_with_cfg_and_kl_counts_every_forward(tmp_path):
    results = main(["--policy", "toy", "--device", "cpu", "--guidance-scale", "2.0", "--kl-beta", "0.1",
                    "--out", str(tmp_path / "toy.json"), *SMALL])
    # CFG doubles every forward; the KL term adds a reference forward per parent in the update
    _check(results, {"tree": (32, 24), "flat": (64, 64)}, {"tree": 12, "flat": 16}, "toy")


def test_toy_with_a_one_step_finish_counts_the_shorter_suffix(tmp_path):
    small = [*SMALL[:-2], "--window-start", "0", "--suffix-steps", "1"]  # window 0..1 of 4: 2 steps left -> 1
    results = main(["--policy", "toy", "--device", "cpu", "--out", str(tmp_path / "toy.json"), *small])
    nfe = {"tree": tree_nfe(2, 2, 2, 0, 4, 1), "flat": flat_nfe(2, 4, 2, 0, 4, 1)}
    assert nfe == {"tree": (2 * (1 + 2 + 4), 2 * 3), "flat": (2 * 4 * 3, 2 * 4 * 2)}
    for mode, (sample, update) in nfe.items():
        assert results["modes"][mode]["nfe_per_iter"] == {"sample": sample, "update": update, "total": sample + update}
    assert results["config"]["suffix_steps"] == 1
    with pytest.raises(ValueError, match="--suffix-steps must be >= 1"):
        parse_args(["--policy", "toy", "--suffix-steps", "0"])


def test_real_shapes_builders_match_the_published_sizes():
    with torch.device("meta"):  # no memory: shapes only
        sd3, sd15 = bench_models.real_sd3_pipeline(), bench_models.real_sd15_pipeline()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(sd15.unet) == 859_520_964 and count(sd15.text_encoder) == 123_060_480  # SD1.5 UNet, CLIP-L
    assert count(sd15.vae) == 83_653_863 and count(sd3.text_encoder_2) == 694_659_840  # SD VAE, CLIP-G
    transformer = sd3.transformer  # SD3.5-medium: 2.47B tensors with the 384x384 position table
    assert count(transformer) + transformer.pos_embed.pos_embed.numel() == 2_469_663_936
    assert sd3.vae.config.latent_channels == 16 and sd3.text_encoder_3 is None
    assert len([b for b in transformer.transformer_blocks if b.attn2 is not None]) == 13


def test_real_flux_builder_matches_flux1_dev():
    with torch.device("meta"):
        flux = bench_models.real_flux_pipeline()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    transformer = flux.transformer
    assert count(transformer) == 11_901_408_320 and count(flux.text_encoder_2) == 4_762_310_656  # FLUX.1-dev, T5-XXL
    assert count(flux.text_encoder) == 123_060_480 and not hasattr(flux.text_encoder, "text_projection")  # CLIP-L
    assert len(transformer.transformer_blocks) == 19 and len(transformer.single_transformer_blocks) == 38
    assert transformer.inner_dim == 24 * 128 and transformer.config.guidance_embeds
    assert tuple(transformer.config.axes_dims_rope) == (16, 56, 56) and transformer.config.in_channels == 64
    assert flux.vae.config.latent_channels == 16 and flux.vae_scale_factor == 8
    assert (flux.vae.config.scaling_factor, flux.vae.config.shift_factor) == (0.3611, 0.1159)
    assert flux.scheduler.config.use_dynamic_shifting and flux.scheduler.config.max_shift == 1.15


def test_argument_errors():
    with pytest.raises(ValueError, match="needs --random-weights or --model-path"):
        parse_args(["--policy", "sd3", "--device", "cpu"])
    with pytest.raises(ValueError, match="--k must be >= 2"):
        parse_args(["--policy", "toy", "--k", "1"])
    with pytest.raises(ValueError, match="window-start"):
        parse_args(["--policy", "toy", "--depth", "3", "--num-steps", "4", "--window-start", "2"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_args(["--policy", "toy", "--dtype", "int8"])


@pytest.mark.parametrize("policy", ["qwenimage", "wan"])
def test_qwenimage_and_wan_tiny_random_weights(tmp_path, policy):
    results = main(["--policy", policy, "--random-weights", "--shapes", "tiny", "--device", "cpu",
                    "--out", str(tmp_path / f"{policy}.json"), *SMALL])
    _check(results, {"tree": (16, 6), "flat": (32, 16)}, {"tree": 12, "flat": 16}, policy)
    assert results["model"]["lora"]["r"] == {"qwenimage": 64, "wan": 32}[policy]  # configs/_base_/models/
    assert results["model"]["builder"] == {"qwenimage": "tools/make_tiny_models.py tiny_qwenimage_pipeline",
                                           "wan": "tools/make_tiny_models.py tiny_wan"}[policy]
    # latents: Qwen-Image 32 px -> [16, 4, 4]; Wan 5 frames at 16 px -> [16, (5 - 1) / 4 + 1, 2, 2]
    latent = {"qwenimage": [16, 4, 4], "wan": [16, 2, 2, 2]}[policy]
    assert all(r["latent_shape"] == latent for r in results["modes"].values())
    assert results["video"] == ({"height": 16, "width": 16, "num_frames": 5} if policy == "wan" else None)


def test_real_qwenimage_and_wan_builders_have_the_memory_plans_sizes(monkeypatch):
    """The models of the --shapes real pipelines, built on the meta device (no memory, not run):
    the parameter counts of tools/memory_plan.py's hub configs."""
    with torch.device("meta"):
        wan, qwen = bench_models.real_wan_models(), bench_models.real_qwenimage_models()
    assert sum(p.numel() for p in wan["transformer"].parameters()) == 1_418_996_800  # Wan 2.1 T2V 1.3B
    assert sum(p.numel() for p in wan["text_encoder"].parameters()) > 5e9  # UMT5-XXL encoder
    assert len(qwen["transformer"].transformer_blocks) == 60 and qwen["transformer"].config.joint_attention_dim == 3584
    assert qwen["text_encoder"].config.text_config.hidden_size == 3584
    # the pipelines around them (scheduler, tokenizer) assemble; the models stay on meta
    monkeypatch.setattr(bench_models, "real_wan_models", lambda: wan)
    monkeypatch.setattr(bench_models, "real_qwenimage_models", lambda: qwen)
    wan_pipe, qwen_pipe = bench_rollout.BUILDERS[("wan", "real")](), bench_rollout.BUILDERS[("qwenimage", "real")]()
    assert type(wan_pipe).__name__ == "WanPipeline" and wan_pipe.scheduler.config.flow_shift == 3.0
    assert type(qwen_pipe).__name__ == "QwenImagePipeline" and qwen_pipe.transformer is qwen["transformer"]
