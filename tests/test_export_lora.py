"""LoRA export to ComfyUI's layout (treegrpo/lora_export.py, tools/export_lora.py), offline on CPU."""
import re

import pytest
import torch
from conftest import write_run_config

from tools.export_lora import main as export_main
from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.checkpoint import save_checkpoint
from treegrpo.lora_export import (LoraModule, detect_family, diffusers_state, from_comfyui, from_diffusers,
                                  known_module_names, load_checkpoint_lora, read_safetensors, to_comfyui,
                                  to_diffusers, unsupported_modules, write_safetensors)

SD3 = dict(policy="SD3Policy", kernel=dict(type="FlowMatchingKernel", eta=0.7))
SD15 = dict(policy="StableDiffusionPolicy", kernel=dict(type="DDIMKernel", eta=1.0))
PARTS = r"\.(lora_down\.weight|lora_up\.weight|alpha)$"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3", "sd15"])


def _train(tmp_path_factory, tiny, name, spec):
    root = tmp_path_factory.mktemp(name)
    policy = dict(type=spec["policy"], model_path=str(tiny[name]), resolution=32, lora=dict(r=4, alpha=8))
    config = write_run_config(root / f"{name}.py", policy, spec["kernel"])  # one iteration, checkpointed
    runner = train_main([str(config), "--work-dir", str(root / "run")])
    return runner, root / "run"


@pytest.fixture(scope="module")
def sd3_run(tmp_path_factory, tiny):
    return _train(tmp_path_factory, tiny, "sd3", SD3)


@pytest.fixture(scope="module")
def sd15_run(tmp_path_factory, tiny):
    return _train(tmp_path_factory, tiny, "sd15", SD15)


def _comfy_merge(weight: torch.Tensor, state: dict, key: str) -> torch.Tensor:
    """ComfyUI's calculate_weight for a 'lora' patch at strength 1, written from its source."""
    up, down = state[key + ".lora_up.weight"].float(), state[key + ".lora_down.weight"].float()
    alpha = state[key + ".alpha"].item() / down.shape[0]
    return weight.float() + alpha * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


def _check_comfy_semantics(runner, stock_model, out_file, prefix, forward_args):
    """Every exported module equals peft's merged weight, and a stock model patched the way
    ComfyUI patches it reproduces the trained model's output."""
    state, _ = read_safetensors(out_file)
    trained = runner.policy.denoiser
    key_map = {prefix + n.replace(".", "_"): n for n, _ in stock_model.named_modules()}  # as ComfyUI builds it
    keys = sorted({re.sub(PARTS, "", k) for k in state})
    assert keys and all(k in key_map for k in keys)
    with torch.no_grad():
        assert not torch.allclose(stock_model(**forward_args)[0], trained(**forward_args)[0])  # training moved it
        for key in keys:
            layer = trained.get_submodule(key_map[key])
            peft_merged = layer.base_layer.weight + layer.get_delta_weight("default")
            torch.testing.assert_close(_comfy_merge(layer.base_layer.weight, state, key), peft_merged.float())
            target = stock_model.get_submodule(key_map[key]).weight
            target.copy_(_comfy_merge(target, state, key))
        torch.testing.assert_close(stock_model(**forward_args)[0], trained(**forward_args)[0], rtol=1e-5, atol=1e-5)


def test_sd3_round_trip_diffusers_comfyui_diffusers(sd3_run, tiny, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    runner, run_dir = sd3_run
    lora_file = run_dir / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors"
    original, metadata = read_safetensors(lora_file)
    prefix, modules = from_diffusers(original, metadata)
    assert prefix == "transformer" and all(m.alpha == 8.0 and m.rank == 4 for m in modules.values())
    comfy = to_comfyui(modules, "sd3")
    for known in (list(modules), known_module_names(runner.policy.denoiser)):
        back, back_meta = to_diffusers(comfy, "sd3", known)
        assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
        _, again = from_diffusers(back, back_meta)
        assert {n: m.alpha for n, m in again.items()} == {n: m.alpha for n, m in modules.items()}
    # the round-tripped file still loads into a stock pipeline and gives the trained transformer
    write_safetensors(tmp_path / "lora" / "pytorch_lora_weights.safetensors", back, back_meta)
    stock = StableDiffusion3Pipeline.from_pretrained(tiny["sd3"], text_encoder_3=None, tokenizer_3=None)
    stock.load_lora_weights(tmp_path / "lora")
    cond = runner.policy.encode_prompts(["a red circle"])
    args = dict(hidden_states=torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0)),
                timestep=torch.tensor([500.0]), encoder_hidden_states=cond["prompt_embeds"],
                pooled_projections=cond["pooled"], return_dict=False)
    with torch.no_grad():
        torch.testing.assert_close(stock.transformer(**args)[0], runner.policy.denoiser(**args)[0],
                                   rtol=1e-5, atol=1e-5)


def test_sd3_export_keys_and_comfyui_semantics(sd3_run, tiny, tmp_path):
    from diffusers import SD3Transformer2DModel

    runner, run_dir = sd3_run
    out = export_main([str(run_dir), "--out", str(tmp_path / "sd3.safetensors")])  # family from the config
    state, metadata = read_safetensors(out)
    assert metadata["treegrpo_family"] == "sd3" and metadata["ss_network_alpha"] == "8.0"
    pattern = re.compile(r"^lora_transformer_transformer_blocks_[01]_attn_(to_q|to_k|to_v|to_out_0)" + PARTS)
    assert len(state) == 2 * 4 * 3 and all(pattern.match(k) for k in state)
    assert state["lora_transformer_transformer_blocks_0_attn_to_out_0.lora_up.weight"].shape == (16, 4)
    alpha = state["lora_transformer_transformer_blocks_1_attn_to_k.alpha"]
    assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == 8.0
    stock = SD3Transformer2DModel.from_pretrained(tiny["sd3"] / "transformer")
    cond = runner.policy.encode_prompts(["a blue square"])
    args = dict(hidden_states=torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1)),
                timestep=torch.tensor([300.0, 800.0]), encoder_hidden_states=cond["prompt_embeds"].expand(2, -1, -1),
                pooled_projections=cond["pooled"].expand(2, -1), return_dict=False)
    _check_comfy_semantics(runner, stock, out, "lora_transformer_", args)
    # the peft tensors of model.safetensors + alpha from the run's config.py give the same LoRA
    from_peft_modules, info = load_checkpoint_lora(run_dir / "checkpoints" / "iter_1", source="peft")
    from_lora_modules, _ = load_checkpoint_lora(run_dir / "checkpoints" / "iter_1", source="diffusers")
    assert info["policy_type"] == "SD3Policy" and set(from_peft_modules) == set(from_lora_modules)
    for name, module in from_lora_modules.items():
        assert torch.equal(from_peft_modules[name].down, module.down) and torch.equal(from_peft_modules[name].up, module.up)
        assert from_peft_modules[name].alpha == module.alpha == 8.0


def test_sd15_export_from_peft_tensors(sd15_run, tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    runner, run_dir = sd15_run
    checkpoint = run_dir / "checkpoints" / "iter_1"
    out = export_main([str(checkpoint), "--out", str(tmp_path / "sd15.safetensors"), "--source", "peft",
                       "--dtype", "bfloat16"])
    state, metadata = read_safetensors(out)
    assert metadata["treegrpo_family"] == "sd15" and metadata["treegrpo_source"].endswith("model.safetensors")
    pattern = re.compile(r"^lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_transformer_blocks_\d+"
                         r"_attn[12]_(to_q|to_k|to_v|to_out_0)" + PARTS)
    assert state and all(pattern.match(k) for k in state)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in state
    assert all(v.dtype == (torch.float32 if k.endswith(".alpha") else torch.bfloat16) for k, v in state.items())
    assert {v.item() for k, v in state.items() if k.endswith(".alpha")} == {8.0}  # from the run's config.py
    modules, _ = load_checkpoint_lora(checkpoint, source="peft")
    assert unsupported_modules("sd15", modules) == []
    exact = export_main([str(checkpoint), "--out", str(tmp_path / "fp32.safetensors"), "--source", "peft"])
    stock = UNet2DConditionModel.from_pretrained(tiny["sd15"] / "unet")
    cond = runner.policy.encode_prompts(["a red circle"])
    args = dict(sample=torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)),
                timestep=torch.tensor([400]), encoder_hidden_states=cond["prompt_embeds"], return_dict=False)
    _check_comfy_semantics(runner, stock, exact, "lora_unet_", args)
    back, _ = to_diffusers(read_safetensors(exact)[0], "sd15", known_module_names(runner.policy.denoiser))
    assert set(back) == {f"unet.{n}.lora_{ab}.weight" for n in modules for ab in "AB"}


def test_hand_computed_delta_and_flux_round_trip_with_mixed_ranks():
    module = LoraModule(down=torch.tensor([[1.0, 2.0]]), up=torch.tensor([[3.0], [4.0]]), alpha=2.0)
    assert module.scale == 2.0
    torch.testing.assert_close(module.delta(), torch.tensor([[6.0, 12.0], [8.0, 16.0]]))
    gen = torch.Generator().manual_seed(0)
    names = {"single_transformer_blocks.0.attn.to_q": (4, 4.0), "transformer_blocks.0.attn.add_q_proj": (4, 1.0),
             "transformer_blocks.1.ff.net.0.proj": (2, 16.0)}
    modules = {n: LoraModule(torch.randn(r, 6, generator=gen), torch.randn(5, r, generator=gen), a)
               for n, (r, a) in names.items()}
    state, metadata = diffusers_state(modules, "transformer")
    prefix, parsed = from_diffusers(state, metadata)
    assert prefix == "transformer" and {n: (m.rank, m.alpha) for n, m in parsed.items()} == names
    assert detect_family(parsed, prefix) == "flux" and unsupported_modules("flux", parsed) == []
    comfy = to_comfyui(parsed, "flux")
    assert "lora_transformer_single_transformer_blocks_0_attn_to_q.alpha" in comfy
    back = from_comfyui(comfy, "flux", list(names) + ["transformer_blocks.0.attn.to_out.0"])
    assert {n: (m.rank, m.alpha) for n, m in back.items()} == names
    assert all(torch.equal(back[n].up, modules[n].up) for n in names)
    no_alpha = {k: v for k, v in comfy.items() if not k.endswith(".alpha")}  # ComfyUI: scale 1
    assert {m.alpha for m in from_comfyui(no_alpha, "flux", names).values()} == {4.0, 2.0}
    assert detect_family(["down_blocks.0.attentions.0.proj_in"]) == "sd15"
    assert detect_family(["transformer_blocks.0.attn.to_q"]) == "sd3"


def test_comfyui_coverage_follows_its_key_maps():
    """unsupported_modules reports exactly what ComfyUI's unet_to_diffusers / mmdit_to_diffusers /
    flux_to_diffusers (comfy/utils.py) leave out: every weight of the real SD1.5, SD3.5-medium and
    FLUX.1-dev denoisers is covered; made-up names and another family's names are not."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    from tools.bench_rollout import FLUX_DEV_TRANSFORMER, SD15_UNET, SD35_MEDIUM_TRANSFORMER

    with torch.device("meta"):  # module names only
        models = {"sd15": UNet2DConditionModel(**SD15_UNET), "sd3": SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER),
                  "flux": FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)}
    for family, model in models.items():
        weights = {k[:-len(".weight")] for k in model.state_dict() if k.endswith(".weight")}  # norms included
        assert set(known_module_names(model)) <= weights and unsupported_modules(family, weights) == [], family
    covered = {  # the ones the first version of the patterns missed
        "sd15": ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2",
                 "down_blocks.0.downsamplers.0.conv", "up_blocks.2.upsamplers.0.conv", "conv_norm_out",
                 "add_embedding.linear_1", "mid_block.attentions.0.transformer_blocks.0.norm2"],
        "sd3": ["pos_embed.proj", "context_embedder", "time_text_embed.timestep_embedder.linear_1",
                "time_text_embed.text_embedder.linear_2", "proj_out", "norm_out.linear",
                "transformer_blocks.3.attn.norm_added_k", "transformer_blocks.12.attn2.norm_q"],
        "flux": ["x_embedder", "context_embedder", "time_text_embed.guidance_embedder.linear_2", "proj_out",
                 "norm_out.linear", "transformer_blocks.0.ff.linear_in", "single_transformer_blocks.37.attn.norm_k",
                 "controlnet_x_embedder"],
    }
    made_up = ["transformer_blocks.0.attn.to_gate", "made_up.linear", "conv_in.extra", "xconv_in"]
    for family, names in covered.items():
        assert unsupported_modules(family, names + made_up) == sorted(made_up), family
    # names of one family that the others' maps do not hold
    assert unsupported_modules("flux", ["pos_embed.proj", "transformer_blocks.0.attn2.to_q"]) == [
        "pos_embed.proj", "transformer_blocks.0.attn2.to_q"]
    assert unsupported_modules("sd3", ["x_embedder", "single_transformer_blocks.0.proj_mlp",
                                       "transformer_blocks.0.attn2.add_q_proj", "transformer_blocks.0.attn2.to_q"]) == [
        "single_transformer_blocks.0.proj_mlp", "transformer_blocks.0.attn2.add_q_proj", "x_embedder"]
    assert unsupported_modules("sd15", ["transformer_blocks.0.attn.to_q", "mid_block.resnets.0.conv1"]) == [
        "transformer_blocks.0.attn.to_q"]


def test_write_run_config_helper(tmp_path):
    from mmengine.config import Config

    path = write_run_config(tmp_path / "run.py", "dict(type='SD3Policy', lora=None)", dict(type="DDIMKernel", eta=1.0),
                            max_iters=3, hooks=[])
    cfg = Config.fromfile(str(path))
    assert cfg.policy == dict(type="SD3Policy", lora=None) and cfg.kernel == dict(type="DDIMKernel", eta=1.0)
    assert cfg.max_iters == 3 and cfg.hooks == [] and cfg.sampler == dict(type="TreeSampler", num_steps=2)
    assert path.read_text().splitlines()[0] == "policy = dict(type='SD3Policy', lora=None)"  # str: as written
    with pytest.raises(ValueError, match=r"unknown config keys \['sampeler'\]; allowed: \['advantage'"):
        write_run_config(tmp_path / "bad.py", "dict()", "dict()", sampeler=dict(type="TreeSampler"))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_main([str(tmp_path / "no_run_here"), "--out", str(tmp_path / "x.safetensors")])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        export_main([str(tmp_path / "empty_run"), "--out", str(tmp_path / "x.safetensors")])
    full = save_checkpoint(tmp_path / "full" / "checkpoints" / "iter_3",
                           {"conv_in.weight": torch.zeros(2, 2), "conv_in.bias": torch.zeros(2)}, {}, {})
    with pytest.raises(ValueError, match="full fine-tuning checkpoint"):
        export_main([str(tmp_path / "full"), "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(FileNotFoundError, match="wrote no diffusers LoRA"):
        load_checkpoint_lora(full, source="diffusers")
    with pytest.raises(ValueError, match=r"family must be one of \['flux', 'qwenimage', 'sd15', 'sd3', 'wan'\], got family='sdxl'"):
        export_main([str(full), "--out", str(tmp_path / "x.safetensors"), "--family", "sdxl"])
    with pytest.raises(ValueError, match="source must be one of"):
        load_checkpoint_lora(full, source="kohya")
    comfy = to_comfyui({"a.b_c": LoraModule(torch.ones(1, 2), torch.ones(2, 1), 1.0)}, "sd3")
    with pytest.raises(ValueError, match="both become 'a_b_c'"):
        from_comfyui(comfy, "sd3", ["a.b_c", "a_b.c"])
    with pytest.raises(KeyError, match="names no known module"):
        from_comfyui(comfy, "sd3", ["x.y"])
    assert not (tmp_path / "x.safetensors").exists()


def test_export_of_the_ema_weights(tmp_path, tiny):
    policy = dict(type="SD3Policy", model_path=str(tiny["sd3"]), resolution=32, lora=dict(r=4, alpha=8))
    config = write_run_config(tmp_path / "ema.py", policy, SD3["kernel"], max_iters=2,
                              hooks=[dict(type="EMAHook", decay=0.5, warmup=False),
                                     dict(type="CheckpointHook", interval=2)])
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    ckpt = tmp_path / "run" / "checkpoints" / "iter_2"
    ema, info = load_checkpoint_lora(ckpt, source="ema")
    live, _ = load_checkpoint_lora(ckpt, source="peft")
    assert info["source"].endswith("ema.safetensors") and set(ema) == set(live)
    for name, module in ema.items():
        assert module.alpha == 8.0  # from the run's config, as for model.safetensors
        torch.testing.assert_close(module.up, runner.ema.shadow[f"{name}.lora_B.default.weight"])
    assert any(not torch.equal(ema[n].up, live[n].up) for n in ema)  # an average, not the last weights
    out = export_main([str(ckpt), "--out", str(tmp_path / "ema_comfy.safetensors"), "--source", "ema"])
    assert (tmp_path / "ema_comfy.safetensors").is_file() and out is not None
    without = tmp_path / "run_plain"
    train_main([str(write_run_config(tmp_path / "plain.py", policy, SD3["kernel"])), "--work-dir", str(without)])
    with pytest.raises(FileNotFoundError, match="ema.safetensors does not exist: the run had no EMAHook"):
        load_checkpoint_lora(without / "checkpoints" / "iter_1", source="ema")


def test_export_refuses_bad_alpha_out_suffix_and_a_family_the_run_contradicts(sd3_run, tmp_path):
    _, run_dir = sd3_run
    out = str(tmp_path / "x.safetensors")
    for alpha in ("-8", "0", "nan", "inf"):
        with pytest.raises(ValueError, match=rf"alpha must be a positive number .*got alpha={alpha}"):
            export_main([str(run_dir), "--out", out, "--alpha", alpha])
    for bad_out in ("lora.pt", "lora", "lora.safetensors.json"):
        with pytest.raises(ValueError, match=r"--out must end in \.safetensors"):
            export_main([str(run_dir), "--out", str(tmp_path / bad_out)])
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        export_main([str(run_dir), "--out", str(tmp_path / "folder.safetensors")])
    for family in ("sd15", "flux"):  # the run's config.py says SD3Policy
        with pytest.raises(ValueError, match=rf"family '{family}' does not match the run: its config.py has "
                                             r"policy.type='SD3Policy' \(family 'sd3'\).*--family sd3"):
            export_main([str(run_dir), "--out", out, "--family", family])
    assert [p.name for p in tmp_path.iterdir()] == ["folder.safetensors"]  # nothing written
    # without the run's config.py: the diffusers key prefix, then the module names decide
    import shutil

    lone = tmp_path / "lone_iter"
    shutil.copytree(run_dir / "checkpoints" / "iter_1", lone)
    with pytest.raises(ValueError, match=r"keys start with 'transformer\.' \(family flux or qwenimage or sd3 or wan\)"):
        export_main([str(lone), "--out", out, "--family", "sd15"])
    with pytest.raises(ValueError, match=r"which are 'sd3' modules; .* --family sd3"):
        export_main([str(lone), "--out", out, "--family", "sd15", "--source", "peft"])
    written = export_main([str(run_dir), "--out", out, "--family", "sd3", "--alpha", "4"])
    assert {v.item() for k, v in read_safetensors(written)[0].items() if k.endswith(".alpha")} == {4.0}


def test_check_family_matches_by_module_names():
    from treegrpo.lora_export import check_family_matches

    assert check_family_matches("flux", ["transformer_blocks.0.attn.to_q"]) == "flux"  # FLUX double blocks only
    assert check_family_matches("sd3", ["made_up.linear"]) == "sd3"  # nothing contradicts it
    with pytest.raises(ValueError, match="which are 'flux' modules"):
        check_family_matches("sd3", ["single_transformer_blocks.0.attn.to_q"])
    with pytest.raises(ValueError, match="which are 'sd15' modules"):
        check_family_matches("flux", ["down_blocks.0.attentions.0.proj_in"])
    with pytest.raises(ValueError, match="policy.type='FluxPolicy'"):
        check_family_matches("sd3", ["transformer_blocks.0.attn.to_q"], "transformer", "FluxPolicy")
