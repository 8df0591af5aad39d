"""The toy world: prompt grammar, renderer, networks, pretraining tool and prompt dataset."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from treegrpo.datasets.toy import ToyShapesPrompts, split_specs
from treegrpo.toy import CLASSIFIER_WEIGHTS, GENERATOR_WEIGHTS
from treegrpo.toy.models import (
    ToyClassifier, ToyDenoiser, ToyTextEncoder, attribute_probabilities, count_parameters,
    euler_sample, load_models, save_models, shifted_sigmas, spec_targets, timestep_embedding,
)
from treegrpo.toy.prompts import (
    MAX_TOKENS, PAD_ID, WORD_TO_ID, ShapeSpec, all_specs, parse_prompt, sample_specs,
    spec_to_prompt, tokenize,
)
from treegrpo.toy.render import COLOUR_RGB, render_specs

ROOT = Path(__file__).resolve().parents[1]


# --- grammar ------------------------------------------------------------------------------
def test_prompt_text_and_round_trip_over_all_specs():
    spec = ShapeSpec("circle", "red", "blue", "small", "top")
    assert spec_to_prompt(spec) == "a small red circle on a blue background at the top"
    specs = all_specs()
    assert len(specs) == 3 * 6 * 5 * 2 * 5 == 900
    prompts = [spec_to_prompt(s) for s in specs]
    assert len(set(prompts)) == 900
    assert all(parse_prompt(p) == s for p, s in zip(prompts, specs))
    assert parse_prompt("A Large green triangle on a white background in the center.") == ShapeSpec(
        "triangle", "green", "white", "large", "center"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("a small orange circle on a blue background at the top", "unknown word 'orange'"),
        ("a red small circle on a blue background at the top", "expected a size"),
        ("a small red circle on a blue background at the left", "'on the left'"),
        ("a small red circle on a blue background at the top now", "unknown word 'now'"),
        ("a small red circle on a blue background at the top top", "extra words"),
        ("a small red circle on a blue", "ends early"),
        ("a small red circle on a red background at the top", "background must differ"),
    ],
)
def test_parse_prompt_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


def test_errors_echo_at_most_80_characters_of_a_huge_prompt():
    good = "a small red circle on a blue background at the top"
    huge = {
        "x" * 10_000_000: (parse_prompt, "unknown word 'xxx"),  # one 10 MB word
        "a " * 5_000_000: (tokenize_one := lambda text: tokenize([text]), "5000000 words"),
        good + " top" * 2_500_000: (parse_prompt, "extra words after the position: 'top top"),
        "A " + "b" * 10_000_000: (tokenize_one, "unknown word 'bbb"),
    }
    for text, (function, message) in huge.items():
        with pytest.raises(ValueError, match=message) as error:
            function(text)
        assert len(str(error.value)) < 600 and f"({len(text)} characters)" in str(error.value)


def test_shape_spec_validates_values():
    with pytest.raises(ValueError, match="ShapeSpec.shape='star'"):
        ShapeSpec("star", "red", "blue", "small", "top")


def test_tokenize_ids_padding_and_errors():
    ids = tokenize(["a small red circle on a blue background at the top", ""])
    assert ids.shape == (2, MAX_TOKENS) and ids.dtype == torch.long
    words = "a small red circle on a blue background at the top".split()
    assert ids[0, :11].tolist() == [WORD_TO_ID[w] for w in words]
    assert ids[0, 11].item() == PAD_ID and PAD_ID == 0
    assert ids[1].tolist() == [0] * MAX_TOKENS  # the CFG null prompt is all padding
    with pytest.raises(ValueError, match="unknown word 'cat'"):
        tokenize(["a cat"])
    with pytest.raises(ValueError, match="more than max_len=3"):
        tokenize(["a small red circle"], max_len=3)


def test_sample_specs_is_deterministic_for_a_seed():
    a = sample_specs(50, torch.Generator().manual_seed(3))
    b = sample_specs(50, torch.Generator().manual_seed(3))
    c = sample_specs(50, torch.Generator().manual_seed(4))
    assert a == b and a != c and len(a) == 50


# --- renderer -----------------------------------------------------------------------------
def _rgb(name):
    return torch.tensor(COLOUR_RGB[name]).view(3)


def test_render_shapes_colours_and_anti_aliasing():
    specs = [
        ShapeSpec("circle", "red", "blue", "large", "center"),
        ShapeSpec("square", "red", "blue", "large", "center"),
        ShapeSpec("triangle", "red", "blue", "large", "center"),
    ]
    images = render_specs(specs)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    red, blue = _rgb("red"), _rgb("blue")
    for image in images:
        assert torch.allclose(image[:, 16, 16], red)  # centre pixel: the shape's colour
        assert torch.allclose(image[:, 0, 0], blue)  # corner: the background
        between = ((image[0] > 0.2) & (image[0] < 0.85)).sum()
        assert between > 0  # anti-aliased edge pixels mix the two colours
    # pixel (20, 20) is 0.141 from the centre on both axes: 1.2 px inside the equal-area square
    # (half side 0.177) but on the circle's edge (0.199 away, radius 0.2); pixel (21, 21) is
    # 0.172 off on both axes: 0.243 away, outside the circle
    assert torch.allclose(images[1, :, 20, 20], red)
    assert not torch.allclose(images[0, :, 20, 20], red, atol=0.1)
    assert torch.allclose(images[0, :, 21, 21], blue)
    # triangle (circumradius 0.28, centroid at y 0.57): pixel (11, 11) near the box's top-left
    # corner is outside, pixel (20, 11) near its bottom-left corner is inside
    assert torch.allclose(images[2, :, 11, 11], blue)
    assert torch.allclose(images[2, :, 20, 11], red)


def test_render_size_position_and_jitter():
    small = ShapeSpec("circle", "white", "green", "small", "left")
    large = ShapeSpec("circle", "white", "green", "large", "right")
    images = render_specs([small, large])
    coverage = (images[:, 0] - 0.10) / (0.95 - 0.10)  # red channel: 0 green bg .. 1 white shape
    area = coverage.sum(dim=(1, 2)) / 32**2
    assert area[0] == pytest.approx(3.14159 * 0.11**2, rel=0.05)
    assert area[1] == pytest.approx(3.14159 * 0.20**2, rel=0.05)
    xs = (torch.arange(32) + 0.5) / 32
    centre_x = (coverage.sum(dim=1) * xs).sum(dim=1) / coverage.sum(dim=(1, 2))
    assert centre_x[0] == pytest.approx(0.26, abs=0.01) and centre_x[1] == pytest.approx(0.74, abs=0.01)
    jittered = render_specs([small, large], generator=torch.Generator().manual_seed(0))
    again = render_specs([small, large], generator=torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again) and not torch.equal(jittered, images)
    with pytest.raises(ValueError, match="size must be >= 8"):
        render_specs([small], size=4)


# --- networks -----------------------------------------------------------------------------
def test_schedule_euler_and_embedding_by_hand():
    assert shifted_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # shift 3: 3s / (1 + 2s) at s = 0.75, 0.5, 0.25 -> 0.9, 0.75, 0.5
    assert torch.allclose(shifted_sigmas(4, 3.0), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    with pytest.raises(ValueError, match="sigma_shift"):
        shifted_sigmas(4, 0.0)
    noise = torch.zeros(2, 3)
    seen = []

    def velocity(x, sigma):
        seen.append(sigma.tolist())
        return torch.ones_like(x) * 2

    out = euler_sample(velocity, noise, shifted_sigmas(4))
    assert torch.allclose(out, torch.full((2, 3), -2.0))  # sum of dt = -1
    assert seen == [[1.0, 1.0], [0.75, 0.75], [0.5, 0.5], [0.25, 0.25]]
    emb = timestep_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    assert emb[0].tolist() == [1.0] * 4 + [0.0] * 4
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(500.0)).item(), abs=1e-5)


def test_attribute_probabilities_by_hand():
    logits = {
        "shape": torch.tensor([[0.0, 0.0, 0.0]]),
        "colour": torch.tensor([[torch.log(torch.tensor(3.0)), 0.0, 0.0, 0.0, 0.0, 0.0]]),
        "background": torch.zeros(1, 6),
        "size": torch.tensor([[0.0, 100.0]]),
        "position": torch.zeros(1, 5),
    }
    targets = torch.tensor([[1, 0, 2, 1, 4]])
    probs = attribute_probabilities(logits, targets)
    assert torch.allclose(probs, torch.tensor([[1 / 3, 3 / 8, 1 / 6, 1.0, 1 / 5]]))
    spec = ShapeSpec("triangle", "purple", "red", "large", "bottom")
    assert spec_targets([spec]).tolist() == [[2, 4, 0, 1, 3]]


def test_model_shapes_and_parameter_counts():
    encoder, denoiser, classifier = ToyTextEncoder(), ToyDenoiser(), ToyClassifier()
    assert 300_000 <= count_parameters(denoiser) <= 1_000_000
    text = encoder(tokenize(["a small red circle on a blue background at the top", ""]))
    assert text["tokens"].shape == (2, MAX_TOKENS, 64) and text["pooled"].shape == (2, 64)
    out = denoiser(torch.randn(2, 3, 32, 32), torch.tensor([0.3, 1.0]), text["tokens"], text["pooled"])
    assert out.shape == (2, 3, 32, 32)
    logits = classifier(torch.rand(2, 3, 32, 32))
    assert {k: v.shape[1] for k, v in logits.items()} == {
        "shape": 3, "colour": 6, "background": 6, "size": 2, "position": 5,
    }
    assert logits["shape"].shape == classifier(torch.rand(2, 3, 64, 64))["shape"].shape  # resized
    with pytest.raises(ValueError, match="channels"):
        ToyDenoiser(channels=(8, 16))


def test_models_are_batch_independent():
    """Row i of a batch-of-8 forward equals a batch-of-1 forward (shipped, trained weights)."""
    torch.manual_seed(0)
    gen = load_models(GENERATOR_WEIGHTS, ("text_encoder", "denoiser"))
    classifier = load_models(CLASSIFIER_WEIGHTS, ("classifier",))["classifier"]
    specs = sample_specs(8, torch.Generator().manual_seed(1))
    ids = tokenize([spec_to_prompt(s) for s in specs[:7]] + [""])
    x, sigma, images = torch.randn(8, 3, 32, 32), torch.rand(8), render_specs(specs)
    with torch.no_grad():
        text = gen["text_encoder"](ids)
        full = gen["denoiser"](x, sigma, text["tokens"], text["pooled"])
        logits = classifier(images)
        for i in (0, 5, 7):
            one = gen["text_encoder"](ids[i : i + 1])
            assert torch.allclose(one["tokens"][0], text["tokens"][i], atol=1e-5)
            v = gen["denoiser"](x[i : i + 1], sigma[i : i + 1], one["tokens"], one["pooled"])
            assert torch.allclose(v[0], full[i], atol=1e-5)
            single = classifier(images[i : i + 1])
            assert all(torch.allclose(single[k][0], logits[k][i], atol=1e-5) for k in logits)
    assert full.abs().mean() > 0.1  # a trained (not zero-initialised) output


def test_save_load_round_trip_and_missing_file(tmp_path):
    torch.manual_seed(0)
    denoiser = ToyDenoiser(channels=(16, 16, 32), emb_dim=32)
    torch.nn.init.normal_(denoiser.conv_out.weight)
    save_models(tmp_path / "d.safetensors", {"denoiser": denoiser})
    loaded = load_models(tmp_path / "d.safetensors", ("denoiser",))["denoiser"]
    assert loaded.config == denoiser.config
    args = (torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 12, 64), torch.randn(2, 64))
    assert torch.equal(loaded(*args), denoiser(*args))
    with pytest.raises(KeyError, match="no 'classifier' model"):
        load_models(tmp_path / "d.safetensors", ("classifier",))
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors.*python tools/pretrain_toy\.py"):
        load_models(tmp_path / "nope.safetensors", ("denoiser",))


# --- pretraining tool ---------------------------------------------------------------------
def _pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain_toy", ROOT / "tools" / "pretrain_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_tool_writes_files_deterministically(tmp_path):
    tool = _pretrain_module()
    args = ["--steps", "2", "--classifier-steps", "2", "--batch-size", "4", "--eval-samples", "4"]
    tool.main(args + ["--out-dir", str(tmp_path / "a")])
    tool.main(args + ["--out-dir", str(tmp_path / "b")])
    for name in ("toy_generator.safetensors", "toy_classifier.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = load_file(str(tmp_path / "a" / "toy_generator.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"text_encoder", "denoiser"}
    config = json.loads((tmp_path / "a" / "toy_config.json").read_text())
    assert config["training"]["steps"] == 2 and config["denoiser"]["channels"] == [32, 64, 96]
    assert 0 <= config["results"]["reward_cfg1"] <= 1
    assert not list((tmp_path / "a").glob("*.tmp"))
    images = torch.rand(6, 3, 32, 32)
    augmented = tool.augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and 0 <= augmented.min() and augmented.max() <= 1
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        tool.parse_args(["--steps", "0"])


# --- prompt dataset -----------------------------------------------------------------------
def test_dataset_splits_disjoint_and_deterministic():
    train, evals = split_specs("train"), split_specs("eval")
    assert len(train) == 720 and len(evals) == 180
    assert not set(train) & set(evals) and set(train) | set(evals) == set(all_specs())
    a = ToyShapesPrompts(num_prompts=1000, seed=0, split="train")
    assert len(a) == 1000 and isinstance(a[0], str)
    assert list(a) == list(ToyShapesPrompts(num_prompts=1000, seed=0, split="train"))
    assert list(a) != list(ToyShapesPrompts(num_prompts=1000, seed=1, split="train"))
    assert len(set(a.prompts[:720])) == 720  # every train prompt once before any repeat
    e = ToyShapesPrompts(num_prompts=500, seed=0, split="eval")
    assert not set(a.prompts) & set(e.prompts)
    assert all(parse_prompt(p) in set(evals) for p in e.prompts)
    with pytest.raises(ValueError, match="split must be one of"):
        ToyShapesPrompts(split="test")
    with pytest.raises(ValueError, match="num_prompts"):
        ToyShapesPrompts(num_prompts=0)
