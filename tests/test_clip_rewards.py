"""CLIP-family rewards: open_clip / aesthetic converters and the four rewards, on tiny random-weight
models saved to tmp folders and loaded through the users' path (preprocessing:
test_clip_preprocess.py)."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tools.make_tiny_models import byte_level_clip_tokenizer
from treegrpo.registry import REWARDS, build
from treegrpo.rewards.base import RewardError, check_rewards
from treegrpo.rewards.clip_convert import (AestheticMLP, aesthetic_mlp_from_state_dict,
                                           clip_model_from_open_clip, load_torch_state_dict,
                                           main as convert_main, open_clip_config,
                                           open_clip_to_transformers)
from treegrpo.rewards.clip_family import (Aesthetic, CLIPScore, HPSv2, PickScore, _from_pretrained,
                                          image_embeds, load_clip_model, text_embeds, tokenize)
from treegrpo.rewards.clip_preprocess import clip_preprocess, letterbox_preprocess
from treegrpo.rewards.clip_text import clean_clip_text

VOCAB, CTX, EMBED = 514, 77, 16  # byte-level tokenizer: 512 bytes + <|startoftext|> + <|endoftext|>
V_WIDTH, V_HEADS, T_WIDTH, T_HEADS, PATCH, IMAGE = 32, 4, 24, 3, 8, 32
PROMPTS = ["a red circle", "two cats on a sofa", "", "a very long prompt " * 10, "x", "blue"]


def rand_images(num: int, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(num, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- open_clip layout: random state dict and a direct reference forward -------------------------


def open_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the open_clip CLIP layout (the names and shapes of the HPS files)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    state = {"visual.conv1.weight": rnd(V_WIDTH, 3, PATCH, PATCH), "visual.class_embedding": rnd(V_WIDTH),
             "visual.positional_embedding": rnd((IMAGE // PATCH) ** 2 + 1, V_WIDTH),
             "visual.proj": rnd(V_WIDTH, EMBED), "token_embedding.weight": rnd(VOCAB, T_WIDTH),
             "positional_embedding": rnd(CTX, T_WIDTH), "text_projection": rnd(T_WIDTH, EMBED),
             "logit_scale": torch.tensor(math.log(1 / 0.07)), "attn_mask": torch.zeros(CTX, CTX)}
    for name, width in (("visual.ln_pre", V_WIDTH), ("visual.ln_post", V_WIDTH), ("ln_final", T_WIDTH)):
        state[f"{name}.weight"], state[f"{name}.bias"] = 1 + rnd(width), rnd(width)
    for prefix, width in (("visual.transformer", V_WIDTH), ("transformer", T_WIDTH)):
        for i in range(2):
            p = f"{prefix}.resblocks.{i}."
            for ln in ("ln_1", "ln_2"):
                state[p + ln + ".weight"], state[p + ln + ".bias"] = 1 + rnd(width), rnd(width)
            shapes = {"attn.in_proj_": (3 * width, width), "attn.out_proj.": (width, width),
                      "mlp.c_fc.": (4 * width, width), "mlp.c_proj.": (width, 4 * width)}
            for name, (out, inp) in shapes.items():
                weight = "attn.in_proj_weight" if name == "attn.in_proj_" else name + "weight"
                bias = "attn.in_proj_bias" if name == "attn.in_proj_" else name + "bias"
                state[p + weight], state[p + bias] = rnd(out, inp), rnd(out)
    return state


def ref_blocks(x, state, prefix, heads, mask=None):
    """open_clip Transformer: x [N, L, D] -> [N, L, D] through nn.MultiheadAttention blocks."""
    width = x.shape[-1]
    x = x.transpose(0, 1)  # NLD -> LND as open_clip
    for i in range(2):
        p = f"{prefix}.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads)
        attn.load_state_dict({"in_proj_weight": state[p + "attn.in_proj_weight"],
                              "in_proj_bias": state[p + "attn.in_proj_bias"],
                              "out_proj.weight": state[p + "attn.out_proj.weight"],
                              "out_proj.bias": state[p + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return x.transpose(0, 1)


def ref_image_features(state, pixels):
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = x + state["visual.positional_embedding"]
    x = F.layer_norm(x, (V_WIDTH,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = ref_blocks(x, state, "visual.transformer", V_HEADS)
    x = F.layer_norm(x, (V_WIDTH,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return x[:, 0] @ state["visual.proj"]


def ref_text_features(state, ids):
    length = ids.shape[1]
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][:length]
    mask = torch.full((length, length), float("-inf")).triu(1)  # causal
    x = ref_blocks(x, state, "transformer", T_HEADS, mask)
    x = F.layer_norm(x, (T_WIDTH,), state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ state["text_projection"]  # EOT = max id


def open_clip_ids(lengths, seed=0):
    """open_clip-style ids: <sot> tokens <eot> then zero padding, [B, 77]."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), CTX, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n + 1] = VOCAB - 2, VOCAB - 1
        ids[row, 1:n + 1] = torch.randint(0, VOCAB - 2, (n,), generator=gen)
    return ids


def test_open_clip_conversion_matches_direct_reference():
    state = open_clip_state()
    model = clip_model_from_open_clip(state, vision_heads=V_HEADS, text_heads=T_HEADS)
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    ids = open_clip_ids([0, 5, 75])
    with torch.no_grad():
        torch.testing.assert_close(image_embeds(model, pixels), ref_image_features(state, pixels),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text_embeds(model, ids), ref_text_features(state, ids),
                                   atol=1e-5, rtol=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.config.vision_config.hidden_act == "gelu"


def test_open_clip_config_of_vit_h_14_shapes():
    meta = {"device": "meta"}
    state = {"visual.conv1.weight": torch.empty(1280, 3, 14, 14, **meta),
             "visual.positional_embedding": torch.empty(257, 1280, **meta),
             "visual.proj": torch.empty(1280, 1024, **meta), "text_projection": torch.empty(1024, 1024, **meta),
             "token_embedding.weight": torch.empty(49408, 1024, **meta),
             "positional_embedding": torch.empty(77, 1024, **meta)}
    for i in range(32):
        state[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(5120, 1280, **meta)
    for i in range(24):
        state[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(4096, 1024, **meta)
    config = open_clip_config(state)
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (224, 14, 1280)
    assert (vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (32, 16, 5120)
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_size) == (49408, 77, 1024)
    assert (text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (24, 16, 4096)
    assert config.projection_dim == 1024 and vision.hidden_act == text.hidden_act == "gelu"
    assert open_clip_config(state, vision_heads=20).vision_config.num_attention_heads == 20


def test_open_clip_conversion_errors():
    state = open_clip_state()
    with pytest.raises(ValueError, match="unexpected key 'visual.extra'"):
        open_clip_to_transformers({**state, "visual.extra": torch.zeros(1)}, V_HEADS, T_HEADS)
    with pytest.raises(ValueError, match="vision_heads"):
        open_clip_to_transformers(state)  # width 32: heads cannot be inferred
    with pytest.raises(ValueError, match="text_heads=5"):
        open_clip_to_transformers(state, V_HEADS, 5)
    with pytest.raises(ValueError, match="hidden_act"):
        open_clip_to_transformers(state, V_HEADS, T_HEADS, hidden_act="relu")
    with pytest.raises(ValueError, match="'visual.proj'"):
        open_clip_to_transformers({k: v for k, v in state.items() if k != "visual.proj"}, V_HEADS, T_HEADS)


def aesthetic_state(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = {0: (1024, dim), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    state = {}
    for index, (out, inp) in sizes.items():
        state[f"layers.{index}.weight"] = torch.randn(out, inp, generator=gen) / math.sqrt(inp)
        state[f"layers.{index}.bias"] = torch.randn(out, generator=gen) * 0.1
    return state


def test_aesthetic_mlp_conversion_equals_direct_application():
    state = aesthetic_state(768)
    mlp = aesthetic_mlp_from_state_dict(state)
    x = torch.randn(4, 768, generator=torch.Generator().manual_seed(1))
    expected = x
    for index in (0, 2, 4, 6, 7):  # linear layers, no activations; dropout off in eval
        expected = expected @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(mlp, AestheticMLP) and not mlp.training
    with pytest.raises(ValueError, match="layers.7.bias"):
        aesthetic_mlp_from_state_dict({k: v for k, v in state.items() if k != "layers.7.bias"})
    with pytest.raises(ValueError, match="layers.2.weight"):
        aesthetic_mlp_from_state_dict({**state, "layers.2.weight": torch.zeros(128, 1000)})


# --- rewards on tiny models saved to disk ------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny CLIP folder (model + byte-level tokenizer), an HPS-layout .pt, an aesthetic .pth."""
    from transformers import CLIPConfig, CLIPModel

    root = tmp_path_factory.mktemp("clip_weights")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=T_WIDTH, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=T_HEADS, max_position_embeddings=CTX, bos_token_id=VOCAB - 2,
                         eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1),
        vision_config=dict(hidden_size=V_WIDTH, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=V_HEADS, image_size=IMAGE, patch_size=PATCH),
        projection_dim=EMBED)
    CLIPModel(config).save_pretrained(root / "clip", safe_serialization=True)
    byte_level_clip_tokenizer().save_pretrained(root / "clip")
    torch.save({"state_dict": open_clip_state(seed=1)}, root / "HPS_tiny.pt")
    torch.save(aesthetic_state(EMBED), root / "aesthetic.pth")
    return root


def make_rewards(weights, **kwargs):
    clip = str(weights / "clip")
    return {
        "HPSv2": HPSv2(checkpoint=str(weights / "HPS_tiny.pt"), clip_path=clip, vision_heads=V_HEADS,
                       text_heads=T_HEADS, **kwargs),
        "PickScore": PickScore(model=clip, tokenizer=clip, **kwargs),
        "CLIPScore": CLIPScore(model=clip, **kwargs),
        "Aesthetic": Aesthetic(checkpoint=str(weights / "aesthetic.pth"), clip_model=clip, **kwargs),
    }


@pytest.mark.parametrize("name", ["HPSv2", "PickScore", "CLIPScore", "Aesthetic"])
def test_reward_shape_and_batch_independence(weights, name):
    images, prompts = rand_images(len(PROMPTS)), list(PROMPTS)
    full = make_rewards(weights, batch_size=len(PROMPTS))[name]
    scores = full(images, prompts)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.device == images.device
    assert scores.std() > 0  # different images / prompts get different scores
    chunked = make_rewards(weights, batch_size=4)[name](images, prompts)
    torch.testing.assert_close(chunked, scores, atol=1e-5, rtol=1e-5)
    alone = torch.cat([full(images[i:i + 1], prompts[i:i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(alone, scores, atol=1e-5, rtol=1e-5)
    order = [3, 0, 5, 1, 4, 2]
    torch.testing.assert_close(full(images[order], [prompts[i] for i in order]), scores[order],
                               atol=1e-5, rtol=1e-5)
    assert full(images[:0], []).shape == (0,)


def test_hps_equals_cosine_of_the_open_clip_reference(weights):
    images = rand_images(3, 50, 37)
    prompts = PROMPTS[:3]
    reward = make_rewards(weights)["HPSv2"]
    pixels = letterbox_preprocess(images, IMAGE)  # hpsv2: longest side to 32, black padding, no crop
    ids = tokenize(byte_level_clip_tokenizer(), prompts, CTX)
    state = open_clip_state(seed=1)
    expected = F.cosine_similarity(ref_image_features(state, pixels), ref_text_features(state, ids))
    torch.testing.assert_close(reward(images, prompts), expected, atol=1e-5, rtol=1e-5)


# text: ftfy, HTML entities twice, whitespace, lower case (OpenAI CLIP / open_clip), in that order
DIRTY = {"fish &amp; chips": "fish & chips", "it\u2019s a \u201ccat\u201d": 'it\'s a "cat"',
         "caf\u00c3\u00a9 au lait": "caf\u00e9 au lait", "&amp;lt;b&amp;gt; tag": "<b> tag",
         "  Two\n\tDOGS  ": "two dogs"}


def test_clean_clip_text_by_hand():
    assert {dirty: clean_clip_text(dirty) for dirty in DIRTY} == DIRTY


def test_hps_and_clipscore_tokenize_cleaned_text_pickscore_does_not(weights):
    tokenizer = byte_level_clip_tokenizer()
    dirty, clean = list(DIRTY), list(DIRTY.values())
    assert not torch.equal(tokenize(tokenizer, dirty, CTX), tokenize(tokenizer, clean, CTX))
    rewards = make_rewards(weights)
    for name in ("HPSv2", "CLIPScore"):
        reward = rewards[name].load()
        torch.testing.assert_close(reward._ids(dirty, reward.model, reward.tokenizer), tokenize(tokenizer, clean, CTX))
    pick = rewards["PickScore"].load()  # the README's CLIPProcessor tokenizes the raw text
    torch.testing.assert_close(pick._ids(dirty, pick.model, pick.tokenizer), tokenize(tokenizer, dirty, CTX))
    images = rand_images(len(dirty), seed=7)
    torch.testing.assert_close(rewards["HPSv2"](images, dirty), rewards["HPSv2"](images, clean))


def test_missing_ftfy_is_named(weights, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy now raises ImportError
    with pytest.raises(ImportError, match=r"ftfy package.*pip install ftfy"):
        make_rewards(weights)["CLIPScore"].load()
    assert make_rewards(weights)["PickScore"].load() is not None  # PickScore does not clean


def test_pickscore_clipscore_aesthetic_formulas(weights):
    images, prompts = rand_images(6, 33, 45, seed=2), list(PROMPTS)
    model = load_clip_model(weights / "clip")
    with torch.no_grad():
        img = image_embeds(model, clip_preprocess(images, IMAGE, crop_rounding="round"))
        img_floor = image_embeds(model, clip_preprocess(images, IMAGE, crop_rounding="floor"))
        txt = text_embeds(model, tokenize(byte_level_clip_tokenizer(), prompts, CTX))
        mlp = aesthetic_mlp_from_state_dict(torch.load(weights / "aesthetic.pth", weights_only=True))
        aesthetic = mlp(img / img.norm(dim=-1, keepdim=True)).squeeze(-1)
    rewards = make_rewards(weights)
    pick = model.logit_scale.exp() * F.cosine_similarity(img_floor, txt)  # 45 - 32 = 13: crops differ
    torch.testing.assert_close(rewards["PickScore"](images, prompts), pick, atol=1e-4, rtol=1e-5)
    clip_score = 2.5 * F.cosine_similarity(img, txt).clamp(min=0)
    torch.testing.assert_close(rewards["CLIPScore"](images, prompts), clip_score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards["Aesthetic"](images, prompts), aesthetic, atol=1e-5, rtol=1e-5)


def test_clipscore_clips_negative_cosines_to_zero(weights, tmp_path):
    images, prompts = rand_images(6, 33, 45, seed=2), list(PROMPTS)
    model = load_clip_model(weights / "clip")
    with torch.no_grad():
        model.visual_projection.weight.neg_()  # flips the sign of every cosine
        cos = F.cosine_similarity(image_embeds(model, clip_preprocess(images, IMAGE)),
                                  text_embeds(model, tokenize(byte_level_clip_tokenizer(), prompts, CTX)))
    model.save_pretrained(tmp_path / "flipped")
    byte_level_clip_tokenizer().save_pretrained(tmp_path / "flipped")
    flipped = CLIPScore(model=str(tmp_path / "flipped"))(images, prompts)
    original = CLIPScore(model=str(weights / "clip"))(images, prompts)
    assert (cos < 0).any()
    torch.testing.assert_close(flipped, 2.5 * cos.clamp(min=0), atol=1e-5, rtol=1e-5)
    assert ((flipped == 0) | (original == 0)).all()  # at most one of cos, -cos is positive


def test_converted_folder_gives_the_same_hps_scores(weights, tmp_path):
    convert_main([str(weights / "HPS_tiny.pt"), str(tmp_path / "hps"), "--vision-heads", str(V_HEADS),
                  "--text-heads", str(T_HEADS)])
    images, prompts = rand_images(2), PROMPTS[:2]
    from_pt = make_rewards(weights)["HPSv2"](images, prompts)
    from_dir = HPSv2(checkpoint=str(tmp_path / "hps"), clip_path=str(weights / "clip"))(images, prompts)
    torch.testing.assert_close(from_dir, from_pt, atol=1e-6, rtol=1e-6)


def test_bfloat16_and_registry(weights):
    images, prompts = rand_images(2), PROMPTS[:2]
    clip = str(weights / "clip")
    reward = build(REWARDS, dict(type="CLIPScore", model=clip, dtype="bfloat16", w=1.0))
    assert isinstance(reward, CLIPScore) and reward.load().model.dtype == torch.bfloat16
    low = reward(images, prompts)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, CLIPScore(model=clip, w=1.0)(images, prompts), atol=0.05, rtol=0)


def test_missing_weights_name_file_source_and_key(weights, tmp_path):
    images, prompts = rand_images(1), ["p"]
    with pytest.raises(FileNotFoundError, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2.*'checkpoint'"):
        HPSv2(checkpoint=str(tmp_path / "HPS_v2.1_compressed.pt"))(images, prompts)
    with pytest.raises(FileNotFoundError, match=r"HPS_v2_compressed\.pt"):
        HPSv2(version="v2.0")(images, prompts)
    with pytest.raises(FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*improved-aesthetic"):
        Aesthetic(checkpoint=None, clip_model=str(weights / "clip"))(images, prompts)
    with pytest.raises(FileNotFoundError, match=r"no folder .*missing_model.*'model'"):
        PickScore(model=str(tmp_path / "missing_model"), tokenizer=str(weights / "clip"))(images, prompts)
    with pytest.raises(FileNotFoundError, match=r"'clip_model'"):
        Aesthetic(checkpoint=str(weights / "aesthetic.pth"), clip_model="./nowhere")(images, prompts)


def test_hub_id_that_cannot_be_fetched_gives_a_download_hint():
    class Offline:
        @staticmethod
        def from_pretrained(path):
            raise OSError("offline")

    with pytest.raises(FileNotFoundError, match=r"huggingface-cli download org/name .*'model'"):
        _from_pretrained(Offline, "org/name", "model", "CLIP model")


def test_load_torch_state_dict_unwraps_state_dict_and_module_prefix(tmp_path):
    from safetensors.torch import save_file

    weight = torch.arange(6.0).reshape(2, 3)
    torch.save({"state_dict": {"module.layer.weight": weight}, "epoch": 3}, tmp_path / "ddp.pt")
    save_file({"layer.weight": weight}, str(tmp_path / "plain.safetensors"))
    for name in ("ddp.pt", "plain.safetensors"):
        state = load_torch_state_dict(tmp_path / name)
        assert list(state) == ["layer.weight"] and torch.equal(state["layer.weight"], weight)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_torch_state_dict(tmp_path / "absent.pt")


def test_constructor_validation():
    with pytest.raises(ValueError, match="dtype must be one of"):
        PickScore(dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        CLIPScore(batch_size=0)
    with pytest.raises(ValueError, match="version"):
        HPSv2(version="v3")
    with pytest.raises(ValueError, match="backend"):
        HPSv2(backend="open_clip")
    with pytest.raises(ValueError, match="w must be"):
        CLIPScore(w=0)
    assert PickScore(dtype=torch.float16).dtype == torch.float16


@pytest.mark.skipif(__import__("importlib").util.find_spec("hpsv2") is not None, reason="hpsv2 installed")
def test_official_backend_without_hpsv2_names_the_extra():
    with pytest.raises(ImportError, match="rewards-official"):
        HPSv2(backend="official")


def test_nan_reward_is_caught_by_check_rewards(weights, tmp_path):
    state = aesthetic_state(EMBED)
    state["layers.7.bias"] = torch.tensor([float("nan")])
    torch.save(state, tmp_path / "nan.pth")
    reward = Aesthetic(checkpoint=str(tmp_path / "nan.pth"), clip_model=str(weights / "clip"))
    scores = reward(rand_images(3), ["a", "b", "c"])
    with pytest.raises(RewardError, match=r"'Aesthetic'.*3 NaN"):
        check_rewards(scores, 3, reward.name)


def test_hps_agrees_with_the_official_package():
    """Ours vs hpsv2 on real weights: set TREEGRPO_HPS_CHECKPOINT (HPS_v2.1_compressed.pt) and
    TREEGRPO_HPS_TOKENIZER (folder of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)."""
    pytest.importorskip("hpsv2")
    checkpoint, tokenizer = os.environ.get("TREEGRPO_HPS_CHECKPOINT"), os.environ.get("TREEGRPO_HPS_TOKENIZER")
    if not checkpoint or not tokenizer:
        pytest.skip("TREEGRPO_HPS_CHECKPOINT / TREEGRPO_HPS_TOKENIZER not set")
    images = (rand_images(4, 224, 224) * 255).round() / 255  # uint8 levels: same pixels for both
    prompts = ["a photo of a cat", "a red car", "an oil painting of a city", "abstract art"]
    ours = HPSv2(checkpoint=checkpoint, clip_path=tokenizer)(images, prompts)
    official = HPSv2(checkpoint=checkpoint, backend="official")(images, prompts)
    assert (ours - official).abs().max().item() < 1e-3
