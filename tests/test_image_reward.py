"""ImageReward on transformers' BLIP: converter, a tiny random-weight model against an independent
forward written from the ImageReward checkpoint layout, preprocessing, batching, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from treegrpo.registry import REWARDS, build
from treegrpo.rewards import blip_convert as bc
from treegrpo.rewards.image_reward import (
    CLIP_MEAN,
    CLIP_STD,
    ImageReward,
    ImageRewardModel,
    build_image_reward_model,
    load_tokenizer,
    preprocess,
)

# Tiny model: ViT width 48 (3 heads), patch 8, image 16; BERT width 32 (2 heads); head dim 16.
HEAD_DIM, V_WIDTH, V_MLP, V_LAYERS, PATCH, IMAGE = 16, 48, 96, 2, 8, 16
T_WIDTH, T_MLP, T_LAYERS, MAX_POS = 32, 40, 2, 40
HEAD_DIMS = [T_WIDTH, 16, 8, 8, 4, 1]
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "background", "dog", "cat"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert_tok")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    return folder


VOCAB = 5 + len(WORDS) + 2  # + [DEC], [ENC]


def image_reward_state_dict(seed: int = 0, extras: bool = False) -> dict[str, torch.Tensor]:
    """A random state dict in the official ImageReward.pt layout (what its modules name)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(key, *shape, scale=0.2, offset=0.0):
        sd[key] = offset + scale * torch.randn(*shape, generator=g)

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    rand(v + "cls_token", 1, 1, V_WIDTH)
    rand(v + "pos_embed", 1, (IMAGE // PATCH) ** 2 + 1, V_WIDTH)
    rand(v + "patch_embed.proj.weight", V_WIDTH, 3, PATCH, PATCH, scale=0.05)
    rand(v + "patch_embed.proj.bias", V_WIDTH)
    for i in range(V_LAYERS):
        b = f"{v}blocks.{i}."
        for norm in ("norm1", "norm2"):
            rand(b + norm + ".weight", V_WIDTH, offset=1.0)
            rand(b + norm + ".bias", V_WIDTH)
        for name, (out_f, in_f) in {"attn.qkv": (3 * V_WIDTH, V_WIDTH), "attn.proj": (V_WIDTH, V_WIDTH),
                                    "mlp.fc1": (V_MLP, V_WIDTH), "mlp.fc2": (V_WIDTH, V_MLP)}.items():
            rand(b + name + ".weight", out_f, in_f)
            rand(b + name + ".bias", out_f)
    rand(v + "norm.weight", V_WIDTH, offset=1.0)
    rand(v + "norm.bias", V_WIDTH)
    rand(t + "embeddings.word_embeddings.weight", VOCAB, T_WIDTH, scale=1.0)
    rand(t + "embeddings.position_embeddings.weight", MAX_POS, T_WIDTH, scale=0.5)
    rand(t + "embeddings.LayerNorm.weight", T_WIDTH, offset=1.0)
    rand(t + "embeddings.LayerNorm.bias", T_WIDTH)
    for i in range(T_LAYERS):
        b = f"{t}encoder.layer.{i}."
        shapes = {"attention.self.query": (T_WIDTH, T_WIDTH), "attention.self.key": (T_WIDTH, T_WIDTH),
                  "attention.self.value": (T_WIDTH, T_WIDTH), "attention.output.dense": (T_WIDTH, T_WIDTH),
                  "crossattention.self.query": (T_WIDTH, T_WIDTH),
                  "crossattention.self.key": (T_WIDTH, V_WIDTH),
                  "crossattention.self.value": (T_WIDTH, V_WIDTH),
                  "crossattention.output.dense": (T_WIDTH, T_WIDTH),
                  "intermediate.dense": (T_MLP, T_WIDTH), "output.dense": (T_WIDTH, T_MLP)}
        for name, (out_f, in_f) in shapes.items():
            rand(b + name + ".weight", out_f, in_f, scale=0.3)
            rand(b + name + ".bias", out_f)
        for norm in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            rand(b + norm + ".weight", T_WIDTH, offset=1.0)
            rand(b + norm + ".bias", T_WIDTH)
    for index, (d_in, d_out) in zip((0, 2, 4, 6, 7), zip(HEAD_DIMS[:-1], HEAD_DIMS[1:])):
        rand(f"mlp.layers.{index}.weight", d_out, d_in, scale=1.0 / math.sqrt(d_in))
        rand(f"mlp.layers.{index}.bias", d_out)
    if extras:  # present in the official file, unused by the score
        sd[t + "embeddings.position_ids"] = torch.arange(MAX_POS).expand(1, -1)
        rand("blip.vision_proj.weight", 8, V_WIDTH)
        rand("blip.vision_proj.bias", 8)
        rand("blip.text_proj.weight", 8, T_WIDTH)
        rand("blip.text_proj.bias", 8)
    return sd


# ---------------------------------------------------------------- independent reference forward
def _heads(x, n):  # [B, N, W] -> [B, n, N, W / n]
    return x.view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def _merge(x):  # [B, n, N, d] -> [B, N, n d]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def reference_vit(sd, pixels):
    """BLIP's VisionTransformer (timm style, LayerNorm eps 1e-6) from the raw checkpoint keys."""
    p = lambda k: sd["blip.visual_encoder." + k]  # noqa: E731
    x = F.conv2d(pixels, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=PATCH)
    x = torch.cat([p("cls_token").expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + p("pos_embed")
    n = V_WIDTH // HEAD_DIM
    for i in range(V_LAYERS):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (V_WIDTH,), p(b + "norm1.weight"), p(b + "norm1.bias"), eps=1e-6)
        q, k, v = F.linear(h, p(b + "attn.qkv.weight"), p(b + "attn.qkv.bias")).chunk(3, dim=-1)
        q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), -1) @ v
        x = x + F.linear(_merge(att), p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        h = F.layer_norm(x, (V_WIDTH,), p(b + "norm2.weight"), p(b + "norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias")))
        x = x + F.linear(h, p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"))
    return F.layer_norm(x, (V_WIDTH,), p("norm.weight"), p("norm.bias"), eps=1e-6)


def reference_text_cls(sd, ids, mask, image_embeds):
    """med.py's BertModel in 'multimodal' mode (mask -10000 on padding) -> [CLS] state [B, W]."""
    p = lambda k: sd["blip.text_encoder." + k]  # noqa: E731
    lin = lambda x, k: F.linear(x, p(k + ".weight"), p(k + ".bias"))  # noqa: E731
    norm = lambda x, k: F.layer_norm(x, (T_WIDTH,), p(k + ".weight"), p(k + ".bias"), eps=1e-12)  # noqa: E731
    n = T_WIDTH // HEAD_DIM

    def attention(pre, x, context, bias):
        q, k, v = (_heads(lin(src, f"{pre}.self.{name}"), n)
                   for name, src in (("query", x), ("key", context), ("value", context)))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM) + bias, -1)
        return norm(lin(_merge(probs @ v), pre + ".output.dense") + x, pre + ".output.LayerNorm")

    x = p("embeddings.word_embeddings.weight")[ids]
    x = x + p("embeddings.position_embeddings.weight")[: ids.shape[1]]
    x = norm(x, "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(T_LAYERS):
        b = f"encoder.layer.{i}."
        x = attention(b + "attention", x, x, bias)
        x = attention(b + "crossattention", x, image_embeds, 0.0)
        h = lin(F.gelu(lin(x, b + "intermediate.dense")), b + "output.dense")
        x = norm(h + x, b + "output.LayerNorm")
    return x[:, 0]


def reference_head(sd, features):
    """ImageReward's MLP (linears 0, 2, 4, 6, 7; no activations) + (r - mean) / std."""
    x = features
    for index in (0, 2, 4, 6, 7):
        x = F.linear(x, sd[f"mlp.layers.{index}.weight"], sd[f"mlp.layers.{index}.bias"])
    return (x.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


def reference_scores(sd, tokenizer, images, prompts):
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                       return_tensors="pt")
    embeds = reference_vit(sd, preprocess(images, IMAGE))
    cls = reference_text_cls(sd, tokens["input_ids"], tokens["attention_mask"], embeds)
    return reference_head(sd, cls)


def sample_inputs(count=5, size=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size + 8, generator=g)
    prompts = [" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (2 + 3 * i,), generator=g))
               for i in range(count)]
    prompts[-1] = prompts[-1] + " zebra " * 30  # unknown words and truncation to 35 tokens
    return images, prompts


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "ImageReward.pt"
    torch.save(image_reward_state_dict(extras=True), path)
    return path


@pytest.fixture(scope="module")
def reward(checkpoint, tokenizer_dir):
    return ImageReward(checkpoint=str(checkpoint), tokenizer=str(tokenizer_dir), batch_size=2,
                       head_dim=HEAD_DIM)


# ------------------------------------------------------------------------------------ converter
def test_round_trip_uses_every_key_once():
    sd = image_reward_state_dict()
    vision, text, head = bc.convert_image_reward_state_dict(sd)
    assert len(vision) + len(text) + len(head) == len(sd)
    assert "embeddings.class_embedding" in vision and "encoder.layers.1.self_attn.projection.weight" in vision
    assert "post_layernorm.bias" in vision and "encoder.layer.1.crossattention.self.key.weight" in text
    back = bc.unconvert_image_reward_state_dict(vision, text, head)
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unused_keys_dropped_and_unknown_keys_rejected():
    plain = bc.convert_image_reward_state_dict(image_reward_state_dict())
    with_extras = bc.convert_image_reward_state_dict(image_reward_state_dict(extras=True))
    for a, b in zip(plain, with_extras):
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    bad = image_reward_state_dict()
    bad["blip.text_decoder.cls.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="blip.text_decoder.cls.bias"):
        bc.convert_image_reward_state_dict(bad)
    bad = image_reward_state_dict()
    bad["blip.visual_encoder.blocks.0.attn.q.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="attn.q.weight"):
        bc.convert_image_reward_state_dict(bad)


def test_configs_from_shapes_and_strict_load():
    vision, text, head = bc.convert_image_reward_state_dict(image_reward_state_dict())
    vcfg = bc.vision_config_from_state_dict(vision, HEAD_DIM)
    tcfg = bc.text_config_from_state_dict(text, HEAD_DIM)
    assert (vcfg["hidden_size"], vcfg["num_attention_heads"], vcfg["num_hidden_layers"]) == (48, 3, 2)
    assert (vcfg["image_size"], vcfg["patch_size"], vcfg["intermediate_size"]) == (16, 8, 96)
    assert vcfg["layer_norm_eps"] == 1e-6 and tcfg["layer_norm_eps"] == 1e-12
    assert (tcfg["hidden_size"], tcfg["num_attention_heads"], tcfg["encoder_hidden_size"]) == (32, 2, 48)
    assert (tcfg["vocab_size"], tcfg["max_position_embeddings"], tcfg["num_hidden_layers"]) == (VOCAB, 40, 2)
    assert bc.head_dims_from_state_dict(head) == HEAD_DIMS
    model = ImageRewardModel(vcfg, tcfg, HEAD_DIMS)
    model.vision.load_state_dict(vision, strict=True)  # every converted key is a transformers key
    model.text.load_state_dict(text, strict=True)
    model.head.load_state_dict(head, strict=True)
    with pytest.raises(ValueError, match="head_dim=64"):
        bc.text_config_from_state_dict({**text, "embeddings.word_embeddings.weight": torch.zeros(5, 96 + 8)})


def test_saved_folder_and_cli(tmp_path, checkpoint, tokenizer_dir, reward):
    out = tmp_path / "converted"
    bc.main([str(checkpoint), str(out), "--head-dim", str(HEAD_DIM)])
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "treegrpo-image-reward" and config["head_dims"] == HEAD_DIMS
    assert config["score_mean"] == 0.16717362830052426 and config["score_std"] == 1.0333394966054072
    _, vision, text, head = bc.load_converted(out)
    expected = bc.convert_image_reward_state_dict(image_reward_state_dict())
    for got, want in zip((vision, text, head), expected):
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    images, prompts = sample_inputs()
    from_folder = ImageReward(checkpoint=str(out), tokenizer=str(tokenizer_dir), batch_size=2)
    from_folder = from_folder(images, prompts)
    torch.testing.assert_close(from_folder, reward(images, prompts), rtol=0, atol=0)


def test_safetensors_input_and_unsafe_pickle(tmp_path):
    from safetensors.torch import save_file

    sd = image_reward_state_dict()
    save_file(sd, str(tmp_path / "ir.safetensors"))
    loaded = bc.load_image_reward_checkpoint(tmp_path / "ir.safetensors")
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    torch.save({"weights": sd, "meta": _Opaque()}, tmp_path / "unsafe.pt")
    with pytest.raises(RuntimeError, match=r"(?s)weights_only=True.*save_file"):
        bc.load_image_reward_checkpoint(tmp_path / "unsafe.pt")


class _Opaque:
    """Not loadable by torch.load(weights_only=True)."""


# ----------------------------------------------------------------------------------- the model
def test_head_and_normalisation_by_hand():
    head = bc.ImageRewardHead([3, 3, 3, 3, 3, 1])
    with torch.no_grad():
        for index in (0, 2, 4, 6):
            head.layers[index].weight.copy_(2.0 * torch.eye(3))
            head.layers[index].bias.fill_(0.0)
        head.layers[7].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        head.layers[7].bias.fill_(0.5)
    raw = head.eval()(torch.tensor([[1.0, -1.0, 0.5]]))  # 16 * (1 - 2 + 1.5) + 0.5 = 8.5
    assert raw.item() == pytest.approx(8.5)
    sd = bc.unconvert_image_reward_state_dict({}, {}, head.state_dict())
    score = reference_head(sd, torch.tensor([[1.0, -1.0, 0.5]])).item()
    assert score == pytest.approx((8.5 - 0.16717362830052426) / 1.0333394966054072)


def test_scores_match_independent_reference(reward, tokenizer_dir):
    images, prompts = sample_inputs()
    scores = reward(images, prompts)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    tokenizer = load_tokenizer(str(tokenizer_dir))
    expected = reference_scores(image_reward_state_dict(), tokenizer, images, prompts)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores.std() > 0.05  # the prompts and images change the score


def test_text_path_uses_cls_and_prompt(reward):
    reward.load()
    tokenizer = reward._tokenizer
    tokens = tokenizer(["a red circle"], padding="max_length", truncation=True, max_length=35)
    assert tokens["input_ids"][0][:5] == [2, 5, 6, 9, 3] and len(tokens["input_ids"][0]) == 35
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [15, 16]
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)).repeat(2, 1, 1, 1)
    scores = reward(images, ["a red circle", "a blue square"])
    assert abs(scores[0] - scores[1]) > 1e-3


def test_batch_composition_and_batch_size_do_not_matter(checkpoint, tokenizer_dir, reward):
    images, prompts = sample_inputs()
    scores = reward(images, prompts)
    big = ImageReward(checkpoint=str(checkpoint), tokenizer=str(tokenizer_dir), batch_size=16,
                      head_dim=HEAD_DIM)
    torch.testing.assert_close(big(images, prompts), scores, rtol=0, atol=1e-5)
    order = [4, 2, 0, 3, 1]
    shuffled = reward(images[order], [prompts[i] for i in order])
    torch.testing.assert_close(shuffled, scores[order], rtol=0, atol=1e-5)
    single = torch.cat([reward(images[i:i + 1], prompts[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(single, scores, rtol=0, atol=1e-5)


def test_built_from_registry_and_bfloat16(checkpoint, tokenizer_dir, reward):
    cfg = dict(type="ImageReward", checkpoint=str(checkpoint), tokenizer=str(tokenizer_dir),
               dtype="bfloat16", head_dim=HEAD_DIM)
    low = build(REWARDS, cfg)
    images, prompts = sample_inputs()
    scores = low(images, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    torch.testing.assert_close(scores, reward(images, prompts), rtol=0, atol=0.15)


# ------------------------------------------------------------------------------- preprocessing
def normalised(pixels):
    """[B, 3, H, W] in [0, 1] -> (pixels - CLIP mean) / CLIP std, written out per channel."""
    return torch.stack([(pixels[:, c] - CLIP_MEAN[c]) / CLIP_STD[c] for c in range(3)], 1)


def test_preprocess_by_hand():
    grey = torch.full((1, 3, 40, 30), 0.25)
    out = preprocess(grey, 16)
    assert out.shape == (1, 3, 16, 16)
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.full((16, 16), (0.25 - CLIP_MEAN[c]) / CLIP_STD[c]))
    columns = torch.arange(32.0).view(1, 1, 1, 32).expand(2, 3, 16, 32) / 32  # no resize, crop 8..23
    torch.testing.assert_close(preprocess(columns, 16), normalised(columns[..., 8:24]))
    rows = torch.arange(21.0).view(1, 1, 21, 1).expand(1, 3, 21, 16) / 21  # crop top = round(2.5) = 2
    torch.testing.assert_close(preprocess(rows, 16), normalised(rows[..., 2:18, :]))
    too_bright = torch.full((1, 3, 16, 16), 1.7)  # clamped to 1 like an 8-bit image
    torch.testing.assert_close(preprocess(too_bright, 16), normalised(torch.ones(1, 3, 16, 16)))


def test_resize_matches_pil_bicubic():
    """The official transform runs PIL's bicubic resize on 8-bit images (torchvision Resize)."""
    smooth = F.interpolate(torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0)),
                           size=(48, 64), mode="bilinear")
    pixels = (smooth * 255).round().to(torch.uint8)
    pil = Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).resize((32, 24), Image.BICUBIC)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()[None, :, :, 4:28] / 255
    ours = preprocess(pixels.float() / 255, 24)
    assert ours.shape == (1, 3, 24, 24)
    assert (ours - normalised(expected)).abs().max() <= 1.5 / 255 / min(CLIP_STD)


# ------------------------------------------------------------------------------------ arguments
def test_missing_checkpoint_error(tmp_path, tokenizer_dir):
    missing = ImageReward(checkpoint=str(tmp_path / "ImageReward.pt"), tokenizer=str(tokenizer_dir))
    with pytest.raises(FileNotFoundError, match=r"ImageReward.pt.*'checkpoint'.*THUDM/ImageReward"):
        missing(torch.rand(1, 3, 16, 16), ["a cat"])


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        ImageReward(checkpoint=str(tmp_path), dtype="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        ImageReward(checkpoint=str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match="checkpoint"):
        ImageReward(checkpoint="")


def test_build_image_reward_model_reads_pt(checkpoint):
    model = build_image_reward_model(checkpoint, head_dim=HEAD_DIM)
    assert not model.training and model.image_size == IMAGE
    assert not any(p.requires_grad for p in model.parameters())


# -------------------------------------------------------------- official package (skipped here)
def test_agrees_with_official_modules(tokenizer_dir):
    pytest.importorskip("ImageReward")
    from ImageReward.ImageReward import MLP
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=V_WIDTH, depth=V_LAYERS,
                            num_heads=V_WIDTH // HEAD_DIM, mlp_ratio=V_MLP / V_WIDTH).eval()
    config = BertConfig(vocab_size=VOCAB, hidden_size=T_WIDTH, num_hidden_layers=T_LAYERS,
                        num_attention_heads=T_WIDTH // HEAD_DIM, intermediate_size=T_MLP,
                        max_position_embeddings=MAX_POS, add_cross_attention=True)
    config.encoder_width = V_WIDTH
    bert = BertModel(config=config, add_pooling_layer=False).eval()
    mlp = MLP(T_WIDTH).eval()
    sd = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    sd.update({f"blip.text_encoder.{k}": v for k, v in bert.state_dict().items()})
    sd.update({f"mlp.{k}": v for k, v in mlp.state_dict().items()})
    vision, text, head = bc.convert_image_reward_state_dict(sd)
    ours = ImageRewardModel(bc.vision_config_from_state_dict(vision, HEAD_DIM),
                            bc.text_config_from_state_dict(text, HEAD_DIM),
                            bc.head_dims_from_state_dict(head))
    ours.vision.load_state_dict(vision)
    ours.text.load_state_dict(text)
    ours.head.load_state_dict(head)
    ours.eval()
    images, prompts = sample_inputs()
    tok = load_tokenizer(str(tokenizer_dir))(prompts, padding="max_length", truncation=True,
                                             max_length=35, return_tensors="pt")
    pixels = preprocess(images, IMAGE)
    with torch.no_grad():
        embeds = vit(pixels)
        cls = bert(tok["input_ids"], attention_mask=tok["attention_mask"], encoder_hidden_states=embeds,
                   encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long),
                   return_dict=True).last_hidden_state[:, 0]
        official = (mlp(cls).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
        got = ours(pixels, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(got, official, rtol=1e-4, atol=1e-4)
