"""A tiny random-weight ``QwenImagePipeline`` for offline tests (called by make_tiny_models.py).

Real classes at toy sizes: a Qwen2.5-VL text encoder (2 layers, hidden 32, a 1-block vision tower
that text-only prompts never run), a byte-level BPE ``Qwen2Tokenizer`` built with no download, a
``QwenImageTransformer2DModel`` with 2 blocks, an ``AutoencoderKLQwenImage`` with 16 latent
channels and 8x spatial downscale, and Qwen-Image's dynamically shifted flow-matching scheduler.

The tokenizer holds the 256 byte symbols, merges that spell every word of the pipeline's prompt
template as one token, and the chat special tokens. The template's system prefix therefore has
exactly ``QwenImagePipeline.prompt_template_encode_start_idx`` (34) tokens, as with the real
tokenizer, so the pipeline's drop of the template tokens leaves exactly the user prompt's tokens
and the chat suffix.
"""
from __future__ import annotations

import re

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen-Image's prompt template (diffusers QwenImagePipeline.prompt_template_encode), split at {}.
TEMPLATE_PREFIX = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                   "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                   "<|im_start|>user\n")
TEMPLATE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def template_words() -> list[str]:
    """The words of the template (a leading space kept, as byte-level BPE sees them), in order."""
    text = re.sub(r"<\|[a-z_]+\|>", "\n", TEMPLATE_PREFIX + TEMPLATE_SUFFIX)
    return list(dict.fromkeys(re.findall(r" ?[A-Za-z]+", text)))


def byte_level_qwen_tokenizer():
    """A ``Qwen2Tokenizer`` over the 256 byte symbols plus one merged token per template word
    (merges grow each word left to right) and the chat special tokens; pad = ``<|endoftext|>``."""
    from transformers import Qwen2Tokenizer

    from tools.make_tiny_models import byte_characters

    chars = byte_characters()
    to_symbols = {byte: chars[byte] for byte in range(256)}
    vocab = {char: index for index, char in enumerate(chars)}
    merges = []
    for word in template_words():
        symbols = [to_symbols[byte] for byte in word.encode("utf-8")]
        prefix = symbols[0]
        for symbol in symbols[1:]:
            if prefix + symbol not in vocab:
                merges.append((prefix, symbol))
                vocab[prefix + symbol] = len(vocab)
            prefix += symbol
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768,
                               additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    return tokenizer


def tiny_qwen25_vl(vocab_size: int, seed: int):
    """A Qwen2_5_VLForConditionalGeneration with a 2-layer text model of hidden size 32 (multimodal
    rotary sections (2, 1, 1) of the 4 frequencies per 8-wide head) and a 1-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                bos_token_id=vocab_size - 3, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 3)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=vocab_size,
                              video_token_id=vocab_size, vision_start_token_id=vocab_size,
                              vision_end_token_id=vocab_size)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_image_pipeline(seed: int = 0):
    """A QwenImagePipeline with random weights (see the module docstring)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    tokenizer = byte_level_qwen_tokenizer()
    text_encoder = tiny_qwen25_vl(len(tokenizer), seed)
    torch.manual_seed(seed + 1)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    # Qwen-Image's scheduler: exponential time shift with mu from the image sequence length.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, time_shift_type="exponential", shift_terminal=0.02)
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)
