"""Per-family LoRA key layouts: diffusers module names -> the names ComfyUI's "Load LoRA" reads.

Family -> (diffusers prefix, ComfyUI prefix), and the ComfyUI module name of a diffusers module ``M``
(the exported key is ``<ComfyUI prefix>`` + that name with every ``.`` replaced by ``_``):

- ``sd15``: (``unet``, ``lora_unet_``), ``M`` itself (the kohya-ss naming).
- ``sd3`` / ``flux``: (``transformer``, ``lora_transformer_``), ``M`` itself (the OneTrainer naming).
- ``qwenimage``: (``transformer``, ``lora_unet_``), ``M`` itself: ComfyUI's Qwen-Image model
  (``comfy/ldm/qwen_image/model.py``) uses the diffusers module names, and ``model_lora_keys_unet``
  maps ``lora_unet_`` + every model key with dots as underscores, for every model.
- ``wan``: (``transformer``, ``lora_unet_``), ``M`` renamed to the original Wan names that ComfyUI's
  Wan model (``comfy/ldm/wan/model.py``) uses (:data:`WAN_RENAMES`: ``attn1.to_q`` -> ``self_attn.q``,
  ``ffn.net.0.proj`` -> ``ffn.0``, ``proj_out`` -> ``head.head``, ...), the same generic
  ``lora_unet_`` map. diffusers' own reader of such files
  (``loaders/lora_conversion_utils.py::_convert_non_diffusers_wan_lora_to_diffusers``) applies the
  inverse renames. A Wan module with no ComfyUI name is refused on export.

Why ComfyUI reads these (read in comfyanonymous/ComfyUI: ``comfy/lora.py``, ``comfy/utils.py``):
- ``model_lora_keys_unet`` maps ``"lora_unet_" + k.replace(".", "_")`` for every diffusers UNet key
  ``k`` (ending in ``.weight``, which is dropped) of ``comfy.utils.unet_to_diffusers`` (SD1.x/2.x/XL);
  for ``model_base.SD3`` it maps ``"lora_transformer_" + k_`` (also ``"transformer." + k``) for every
  key of ``comfy.utils.mmdit_to_diffusers`` (to_q/to_k/to_v as slices of the fused ``qkv``); for
  ``model_base.Flux`` the same two prefixes over ``comfy.utils.flux_to_diffusers``; for every model
  ``"lora_unet_" + m_`` for each of its own weights ``diffusion_model.m.weight`` (Qwen-Image, Wan).
  The module names each map covers are listed at :data:`COMFYUI_MODULES`.
"""
from __future__ import annotations

import re

FAMILIES = {"sd15": ("unet", "lora_unet_"), "sd3": ("transformer", "lora_transformer_"),
            "flux": ("transformer", "lora_transformer_"), "qwenimage": ("transformer", "lora_unet_"),
            "wan": ("transformer", "lora_unet_")}
POLICY_FAMILY = {"StableDiffusionPolicy": "sd15", "SD3Policy": "sd3", "FluxPolicy": "flux",
                 "QwenImagePolicy": "qwenimage", "WanPolicy": "wan"}
# Module paths M whose ``M.weight`` is a key of ComfyUI's diffusers -> ComfyUI key maps in
# comfy/utils.py (comfyanonymous/ComfyUI; keyed as lora_unet_/lora_transformer_ + M_ by
# comfy/lora.py::model_lora_keys_unet); a ComfyUI LoRA key of any other module is reported
# "lora key not loaded" and skipped. Block indices are not checked against the model's depth.
# Read: unet_to_diffusers and mmdit_to_diffusers at ComfyUI commit 2ba5cc8b; the later additions
# to mmdit_to_diffusers (attn2, q/k norms) and flux_to_diffusers as of ComfyUI 0.3.7x.
# - unet_to_diffusers (SD1.x/2.x/XL): per resnet conv1, conv2, time_emb_proj, conv_shortcut, norm1,
#   norm2; per attention proj_in, proj_out, norm and per transformer block norm1-3, attn1/attn2
#   to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2; the down/upsampler convs; UNET_MAP_BASIC:
#   conv_in, conv_out, conv_norm_out, time_embedding / class_embedding / add_embedding linear_1/2.
_UNET_LEVEL = r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)"
_UNET = (rf"{_UNET_LEVEL}\.resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut|norm1|norm2)"
         rf"|{_UNET_LEVEL}\.attentions\.\d+\.(proj_in|proj_out|norm)"
         rf"|{_UNET_LEVEL}\.attentions\.\d+\.transformer_blocks\.\d+\."
         r"(norm[123]|attn[12]\.(to_[qkv]|to_out\.0)|ff\.net\.(0\.proj|2))"
         r"|down_blocks\.\d+\.downsamplers\.0\.conv|up_blocks\.\d+\.upsamplers\.0\.conv"
         r"|conv_in|conv_out|conv_norm_out|(time_embedding|class_embedding|add_embedding)\.linear_[12]")
# - mmdit_to_diffusers (SD3 / SD3.5): per block attn to_q/to_k/to_v, add_q/k/v_proj, to_out.0,
#   to_add_out, norm_q/norm_k/norm_added_q/norm_added_k; attn2 (SD3.5 dual attention) to_q/to_k/to_v,
#   to_out.0, norm_q/norm_k; ff / ff_context net.0.proj, net.2; norm1 / norm1_context .linear;
#   MMDIT_MAP_BASIC: pos_embed.proj, context_embedder, time_text_embed timestep/text embedder
#   linear_1/2, norm_out.linear, proj_out.
_SD3 = (r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|to_out\.0|to_add_out|norm_(q|k|added_q|added_k))"
        r"|attn2\.(to_[qkv]|to_out\.0|norm_[qk])|ff(_context)?\.net\.(0\.proj|2)|norm1(_context)?\.linear)"
        r"|pos_embed\.proj|context_embedder|time_text_embed\.(timestep|text)_embedder\.linear_[12]"
        r"|norm_out\.linear|proj_out")
# - flux_to_diffusers (FLUX.1): double blocks as SD3 without attn2, plus the LyCORIS names
#   ff / ff_context linear_in/linear_out; single blocks attn to_q/to_k/to_v (slices of linear1),
#   proj_mlp, proj_out, norm.linear, attn norm_q/norm_k (and FLUX.2's attn.to_qkv_mlp_proj,
#   attn.to_out); MAP_BASIC: x_embedder, controlnet_x_embedder, context_embedder, time_text_embed
#   timestep/text/guidance embedder linear_1/2, norm_out.linear, proj_out.
_FLUX = (r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|to_out\.0|to_add_out|norm_(q|k|added_q|added_k))"
         r"|ff(_context)?\.(net\.(0\.proj|2)|linear_(in|out))|norm1(_context)?\.linear)"
         r"|single_transformer_blocks\.\d+\.(attn\.(to_[qkv]|norm_[qk]|to_qkv_mlp_proj|to_out)|proj_mlp|proj_out"
         r"|norm\.linear)|x_embedder|controlnet_x_embedder|context_embedder"
         r"|time_text_embed\.(timestep|text|guidance)_embedder\.linear_[12]|norm_out\.linear|proj_out")
# - Qwen-Image (comfy/ldm/qwen_image/model.py, diffusers names): per block attn to_q/to_k/to_v,
#   add_q/k/v_proj, to_out.0, to_add_out, norm_q/norm_k/norm_added_q/norm_added_k; img_mod.1,
#   txt_mod.1; img_mlp / txt_mlp net.0.proj, net.2; top level img_in, txt_in, txt_norm,
#   time_text_embed.timestep_embedder.linear_1/2, norm_out.linear, proj_out.
_QWEN = (r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|to_out\.0|to_add_out|norm_(q|k|added_q|added_k))"
         r"|(img|txt)_mod\.1|(img|txt)_mlp\.net\.(0\.proj|2))"
         r"|img_in|txt_in|txt_norm|time_text_embed\.timestep_embedder\.linear_[12]|norm_out\.linear|proj_out")
# - Wan (comfy/ldm/wan/model.py, original Wan names) <- diffusers WanTransformer3DModel names, as
#   (diffusers regex, ComfyUI replacement); i2v's image projections included. diffusers' affine
#   cross-attention norm is ``norm2``, the original's ``norm3``.
WAN_RENAMES = (
    (r"blocks\.(\d+)\.attn1\.to_([qkv])", r"blocks.\1.self_attn.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0", r"blocks.\1.self_attn.o"),
    (r"blocks\.(\d+)\.attn1\.norm_([qk])", r"blocks.\1.self_attn.norm_\2"),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])", r"blocks.\1.cross_attn.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0", r"blocks.\1.cross_attn.o"),
    (r"blocks\.(\d+)\.attn2\.norm_([qk])", r"blocks.\1.cross_attn.norm_\2"),
    (r"blocks\.(\d+)\.attn2\.add_([kv])_proj", r"blocks.\1.cross_attn.\2_img"),
    (r"blocks\.(\d+)\.attn2\.norm_added_k", r"blocks.\1.cross_attn.norm_k_img"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj", r"blocks.\1.ffn.0"),
    (r"blocks\.(\d+)\.ffn\.net\.2", r"blocks.\1.ffn.2"),
    (r"blocks\.(\d+)\.norm2", r"blocks.\1.norm3"),
    (r"condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
    (r"condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
    (r"condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
    (r"condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.0\.proj", "img_emb.proj.1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.2", "img_emb.proj.3"),
    (r"patch_embedding", "patch_embedding"),
    (r"proj_out", "head.head"),
)
_WAN = "|".join(pattern for pattern, _ in WAN_RENAMES)
COMFYUI_MODULES = {family: re.compile(rf"^({pattern})$") for family, pattern in
                   (("sd15", _UNET), ("sd3", _SD3), ("flux", _FLUX), ("qwenimage", _QWEN), ("wan", _WAN))}
# Families whose exported names are not the diffusers names: every module must be renamed.
RENAMES = {"wan": WAN_RENAMES}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got family={family!r}")
    return family


def comfyui_name(family: str, module: str) -> str | None:
    """The module's name in ComfyUI's model of ``family`` (dots kept); None when a renamed
    family's ComfyUI model has no such module."""
    rules = RENAMES.get(check_family(family))
    if rules is None:
        return module
    for pattern, replacement in rules:
        if re.fullmatch(pattern, module):
            return re.sub(rf"^{pattern}$", replacement, module)
    return None


def comfyui_key(family: str, module: str) -> str:
    """``transformer_blocks.0.attn.to_out.0`` -> ``lora_transformer_transformer_blocks_0_attn_to_out_0``
    (sd3); ``blocks.0.attn1.to_q`` -> ``lora_unet_blocks_0_self_attn_q`` (wan). ValueError for a
    module the family's ComfyUI model does not have (wan)."""
    name = comfyui_name(family, module)
    if name is None:
        raise ValueError(
            f"the {family} module {module!r} has no counterpart in ComfyUI's {family} model (its names: "
            f"treegrpo.lora_keys.WAN_RENAMES), so no ComfyUI LoRA key can be written for it; train LoRA "
            "on the attention / FFN projections only, or use the diffusers-format file the run writes "
            "(checkpoints/iter_<n>/lora/pytorch_lora_weights.safetensors, read by pipe.load_lora_weights)")
    return FAMILIES[family][1] + name.replace(".", "_")


def underscore_index(known_modules, family: str | None = None) -> dict[str, str]:
    """{ComfyUI name of ``M`` with dots as underscores: ``M``} (``family`` None: ``M`` itself);
    modules without a ComfyUI name are left out; ValueError when two names collide."""
    index: dict[str, str] = {}
    for name in known_modules:
        renamed = name if family is None else comfyui_name(family, name)
        if renamed is None:
            continue
        flat = renamed.replace(".", "_")
        if index.get(flat, name) != name:
            raise ValueError(f"module names {index[flat]!r} and {name!r} both become {flat!r}: "
                             "the ComfyUI layout cannot tell them apart")
        index[flat] = name
    return index


def detect_family(module_names, prefix: str | None = None, policy_type: str | None = None) -> str:
    """The model family from the policy class name, else from the module names / diffusers prefix."""
    if policy_type in POLICY_FAMILY:
        return POLICY_FAMILY[policy_type]
    names = list(module_names)
    if prefix == "unet" or any(n.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for n in names):
        return "sd15"
    if any(n.startswith("single_transformer_blocks.") for n in names):
        return "flux"
    if any(n.startswith("blocks.") or n.startswith("condition_embedder.") for n in names):
        return "wan"
    if any(re.match(r"transformer_blocks\.\d+\.(img|txt)_(mod|mlp)\.", n) or n.startswith(("img_in", "txt_in"))
           for n in names):
        return "qwenimage"
    if any(n.startswith("transformer_blocks.") for n in names):
        return "sd3"
    raise ValueError(f"cannot tell the model family from modules {names[:3]}; pass family= one of {sorted(FAMILIES)}")


def check_family_matches(family: str, module_names, prefix: str | None = None,
                         policy_type: str | None = None) -> str:
    """ValueError when ``family`` contradicts the checkpoint: the run's ``policy.type``, the
    diffusers key prefix (``unet`` / ``transformer``) or the module names. A FLUX or Qwen-Image
    LoRA on attention projections only has SD3-like names, so ``flux`` and ``qwenimage`` are
    accepted for those when nothing else tells."""
    check_family(family)
    fix = "leave --family out (it is read from the checkpoint) or pass"
    if policy_type in POLICY_FAMILY and POLICY_FAMILY[policy_type] != family:
        right = POLICY_FAMILY[policy_type]
        raise ValueError(f"family {family!r} does not match the run: its config.py has policy.type="
                         f"{policy_type!r} (family {right!r}); {fix} --family {right}")
    if prefix is not None and prefix != FAMILIES[family][0]:
        right = sorted(f for f, (p, _) in FAMILIES.items() if p == prefix)
        raise ValueError(f"family {family!r} does not match the LoRA file: its keys start with "
                         f"{prefix + '.'!r} (family {' or '.join(right) or 'unknown'}); {fix} one of those")
    names = list(module_names)
    try:
        by_names = detect_family(names)
    except ValueError:
        return family  # names of no known layout: nothing contradicts the given family
    if by_names != family and not (by_names == "sd3" and family in ("flux", "qwenimage")):
        raise ValueError(f"family {family!r} does not match the checkpoint's LoRA modules (e.g. {names[:2]}), "
                         f"which are {by_names!r} modules; {fix} --family {by_names}")
    return family


def unsupported_modules(family: str, module_names) -> list[str]:
    """Module names that ComfyUI's key map for ``family`` does not cover (it would skip them)."""
    pattern = COMFYUI_MODULES[check_family(family)]
    return sorted(n for n in module_names if not pattern.match(n))


