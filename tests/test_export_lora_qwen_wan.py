"""ComfyUI LoRA export for Qwen-Image and Wan (treegrpo/lora_keys.py), on the tiny offline models.

The exported keys are checked three ways: each maps back to a real module of the diffusers model;
a stock model patched the way ComfyUI patches (W += alpha / r * up @ down) reproduces the peft
model's output; and diffusers' own readers of these non-diffusers layouts
(``_convert_non_diffusers_qwen_lora_to_diffusers``, ``_convert_musubi_wan_lora_to_diffusers``,
written by others from the original Qwen-Image / Wan names) load the file into the stock pipeline
with the same result."""
import copy

import pytest
import torch

from treegrpo.lora_export import (LoraModule, check_family_matches, comfyui_key, detect_family, from_comfyui,
                                  from_peft, known_module_names, to_comfyui, to_diffusers, unsupported_modules)
from treegrpo.lora_keys import comfyui_name

PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha")


def _with_random_lora(model, targets, seed):
    """A copy of ``model`` with LoRA r=4, alpha=8 on ``targets`` and non-zero random lora_B."""
    from peft import LoraConfig

    adapted = copy.deepcopy(model)
    adapted.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights="gaussian"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    lora = {n: p.detach().clone() for n, p in adapted.state_dict().items() if ".lora_" in n}
    return adapted, from_peft(lora, alpha=8.0)


def _comfy_patch(stock, state, family, modules):
    """Patch ``stock`` in place as ComfyUI's calculate_weight does for each exported key."""
    with torch.no_grad():
        for name in modules:
            key = comfyui_key(family, name)
            up, down = state[key + ".lora_up.weight"].float(), state[key + ".lora_down.weight"].float()
            weight = stock.get_submodule(name).weight
            delta = state[key + ".alpha"].item() / down.shape[0] * (up.flatten(1) @ down.flatten(1))
            weight.copy_(weight + delta.reshape(weight.shape))


def _check_export(stock, adapted, modules, family, prefix, forward):
    state = to_comfyui(modules, family)
    keys = {k[:-len(p)] for k in state for p in PARTS if k.endswith(p)}
    assert len(state) == 3 * len(modules) and len(keys) == len(modules) and all(k.startswith(prefix) for k in keys)
    real = known_module_names(stock)
    back = from_comfyui(state, family, real)  # every key names a real module of the diffusers model
    assert set(back) == set(modules) and all(n in real for n in back)
    for name, module in back.items():
        assert torch.equal(module.down, modules[name].down) and torch.equal(module.up, modules[name].up)
        assert module.alpha == 8.0
    diff_state, _ = to_diffusers(state, family, real)
    assert set(diff_state) == {f"transformer.{n}.lora_{ab}.weight" for n in modules for ab in "AB"}
    with torch.no_grad():
        trained = forward(adapted)
        assert not torch.allclose(forward(stock), trained)
        patched = copy.deepcopy(stock)
        _comfy_patch(patched, state, family, modules)
        torch.testing.assert_close(forward(patched), trained, rtol=1e-4, atol=1e-5)
    return state


def test_wan_keys_by_hand():
    assert comfyui_key("wan", "blocks.3.attn1.to_out.0") == "lora_unet_blocks_3_self_attn_o"
    assert comfyui_key("wan", "blocks.0.attn2.to_k") == "lora_unet_blocks_0_cross_attn_k"
    assert comfyui_key("wan", "blocks.1.attn2.add_v_proj") == "lora_unet_blocks_1_cross_attn_v_img"
    assert comfyui_key("wan", "blocks.0.ffn.net.0.proj") == "lora_unet_blocks_0_ffn_0"
    assert comfyui_key("wan", "condition_embedder.time_proj") == "lora_unet_time_projection_1"
    assert comfyui_key("wan", "condition_embedder.text_embedder.linear_2") == "lora_unet_text_embedding_2"
    assert comfyui_key("wan", "proj_out") == "lora_unet_head_head"
    assert comfyui_name("wan", "blocks.0.norm2") == "blocks.0.norm3"  # diffusers' norm2 is the original norm3
    assert comfyui_key("qwenimage", "transformer_blocks.2.img_mlp.net.0.proj") == (
        "lora_unet_transformer_blocks_2_img_mlp_net_0_proj")
    assert unsupported_modules("wan", ["blocks.0.attn1.to_q", "blocks.0.attn1.made_up", "rope"]) == [
        "blocks.0.attn1.made_up", "rope"]
    with pytest.raises(ValueError, match=r"no counterpart in ComfyUI's wan model.*pytorch_lora_weights\.safetensors"):
        to_comfyui({"blocks.0.attn1.made_up": LoraModule(torch.ones(1, 2), torch.ones(2, 1), 1.0)}, "wan")
    assert detect_family(["blocks.0.attn1.to_q"]) == "wan"
    assert detect_family(["transformer_blocks.0.img_mlp.net.2"]) == "qwenimage"
    assert detect_family(["transformer_blocks.0.attn.to_q"], "transformer", "QwenImagePolicy") == "qwenimage"
    assert check_family_matches("qwenimage", ["transformer_blocks.0.attn.to_q"]) == "qwenimage"
    with pytest.raises(ValueError, match="which are 'wan' modules"):
        check_family_matches("qwenimage", ["blocks.0.attn1.to_q"])


def test_real_size_denoisers_are_covered():
    """Every weight of the real Qwen-Image and Wan 2.1 14B transformers (meta tensors, names only)
    has a ComfyUI name; for Wan the names are the original ones, all distinct."""
    from diffusers import QwenImageTransformer2DModel, WanTransformer3DModel

    from tools.memory_plan import QWEN_IMAGE, WAN21_14B

    with torch.device("meta"):
        models = {"qwenimage": QwenImageTransformer2DModel(**QWEN_IMAGE),
                  "wan": WanTransformer3DModel(**WAN21_14B)}
    for family, model in models.items():
        weights = {k[:-len(".weight")] for k in model.state_dict() if k.endswith(".weight")}
        assert set(known_module_names(model)) <= weights and unsupported_modules(family, weights) == [], family
    wan_names = [comfyui_name("wan", n) for n in known_module_names(models["wan"])]
    assert len(set(wan_names)) == len(wan_names) and "blocks.39.cross_attn.o" in wan_names


def test_wan_export_semantics_and_diffusers_reads_it(tmp_path):
    from tools.export_lora import main as export_main
    from tools.tiny_wan import tiny_wan_pipeline
    from treegrpo.checkpoint import save_checkpoint
    from treegrpo.lora_export import read_safetensors

    pipe = tiny_wan_pipeline(0)
    stock = pipe.transformer
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]  # attn1 and attn2
    adapted, modules = _with_random_lora(stock, targets, seed=1)
    gen = torch.Generator().manual_seed(2)
    args = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=gen), timestep=torch.tensor([600]),
                encoder_hidden_states=torch.randn(1, 6, 32, generator=gen), return_dict=False)
    state = _check_export(stock, adapted, modules, "wan", "lora_unet_blocks_", lambda m: m(**args)[0])
    assert "lora_unet_blocks_1_cross_attn_o.lora_up.weight" in state and len(modules) == 2 * 10
    pipe.load_lora_weights(state)  # diffusers' musubi-tuner (lora_unet_blocks_*) reader
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**args)[0], adapted(**args)[0], rtol=1e-4, atol=1e-5)
    # the CLI on a WanPolicy checkpoint (peft tensors; family and alpha from the run's config.py)
    run = tmp_path / "run"
    peft_state = {n: p for n, p in adapted.state_dict().items() if ".lora_" in n}
    save_checkpoint(run / "checkpoints" / "iter_1", peft_state, {}, {})
    (run / "config.py").write_text("policy = dict(type='WanPolicy', lora=dict(r=4, alpha=8))\n")
    out = export_main([str(run), "--out", str(tmp_path / "wan.safetensors")])
    written, metadata = read_safetensors(out)
    assert metadata["treegrpo_family"] == "wan" and set(written) == set(state)
    assert all(torch.equal(written[k], state[k]) for k in state)


def test_qwen_image_export_semantics_and_diffusers_reads_it():
    from tools.tiny_qwen_image import tiny_qwen_image_pipeline
    from treegrpo.policies.qwen_image import QWEN_IMAGE_LORA_TARGETS

    pipe = tiny_qwen_image_pipeline(0)
    stock = pipe.transformer
    adapted, modules = _with_random_lora(stock, QWEN_IMAGE_LORA_TARGETS, seed=3)
    config = stock.config
    gen = torch.Generator().manual_seed(4)
    args = dict(hidden_states=torch.randn(1, 4, config.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(1, 3, config.joint_attention_dim, generator=gen),
                encoder_hidden_states_mask=torch.ones(1, 3, dtype=torch.long), timestep=torch.tensor([0.5]),
                img_shapes=[[(1, 2, 2)]], return_dict=False)
    state = _check_export(stock, adapted, modules, "qwenimage", "lora_unet_transformer_blocks_",
                          lambda m: m(**args)[0])
    assert "lora_unet_transformer_blocks_0_attn_to_add_out.alpha" in state
    pipe.load_lora_weights(state)  # diffusers' reader of lora_unet_ Qwen-Image files
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**args)[0], adapted(**args)[0], rtol=1e-4, atol=1e-5)
