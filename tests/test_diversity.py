"""Diversity statistics (treegrpo/diversity.py) against hand computations, and tools/diversity.py
end to end on the toy world (and with the tiny CLIP model of tools/make_tiny_models.py)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from tools.diversity import fmt, main as diversity_main, markdown_report
from treegrpo.diversity import (clip_features, kid, mean_pairwise_distance, mmd2_unbiased,
                                polynomial_kernel, toy_features)

# --- kernel and MMD by hand ------------------------------------------------------------------
X1, Y1 = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])  # D = 1
X2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # D = 2
Y2 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])


def test_polynomial_kernel_matrix_by_hand():
    # k(a, b) = (a b + 1)^3 with gamma = 1/D = 1: rows x = 0, 1; columns y = 2, 3
    assert torch.equal(polynomial_kernel(X1, Y1), torch.tensor([[1.0, 1.0], [27.0, 64.0]], dtype=torch.float64))
    # degree 2, gamma = 1/D = 0.5: (0.5 x.y + 1)^2, x.y = [[0, 2], [0, 0], [0, 2]]
    k = polynomial_kernel(X2, Y2, degree=2)
    assert k.dtype == torch.float64
    assert torch.equal(k, torch.tensor([[1.0, 4.0], [1.0, 1.0], [1.0, 4.0]], dtype=torch.float64))
    # explicit gamma and coef: (2 * x.y + 0)^1
    assert torch.equal(polynomial_kernel(X2, X2, degree=1, gamma=2.0, coef=0.0),
                       2.0 * (X2 @ X2.T).double())


def test_mmd2_unbiased_by_hand():
    # K_xx = [[1, 1], [1, 8]] -> off-diagonal mean 1; K_yy = [[125, 343], [343, 1000]] -> 343;
    # K_xy = [[1, 1], [27, 64]] -> mean 93 / 4 = 23.25; MMD^2 = 1 + 343 - 2 * 23.25 = 297.5
    assert mmd2_unbiased(X1, Y1).item() == pytest.approx(297.5)
    # degree 2: K_xx off-diagonal [1, 2.25, 2.25] twice -> 11 / 6; K_yy off-diagonal 1 -> 1;
    # K_xy above -> mean 12 / 6 = 2; MMD^2 = 11/6 + 1 - 4 = -7/6 (unbiased: may be negative)
    def quadratic(a, b):
        return polynomial_kernel(a, b, degree=2)

    assert mmd2_unbiased(X2, Y2, quadratic).item() == pytest.approx(-7.0 / 6.0)


def test_mmd2_is_symmetric_and_closed_form_for_a_set_with_itself():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    assert mmd2_unbiased(x, y).item() == pytest.approx(mmd2_unbiased(y, x).item(), rel=1e-12)
    assert mmd2_unbiased(x, y).item() != pytest.approx(0.0, abs=1e-3)
    # one set against itself: 2 (off-diagonal mean - full mean) = 2 (S - tr) / (n (n-1)) - 2 S / n^2
    k = polynomial_kernel(x, x)
    s, tr, n = k.sum(), k.trace(), 7
    assert mmd2_unbiased(x, x).item() == pytest.approx((2 * (s - tr) / (n * (n - 1)) - 2 * s / n**2).item())


def test_mmd2_near_zero_for_one_distribution_and_large_for_a_shift():
    same, shifted = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)
        same.append(mmd2_unbiased(x, y).item())
        shifted.append(mmd2_unbiased(x, y + 1.0).item())
    same, shifted = torch.tensor(same), torch.tensor(shifted)
    assert abs(same.mean().item()) < 3 * same.std().item() / math.sqrt(20) + 1e-3  # unbiased: E = 0
    assert shifted.min().item() > 10 * same.abs().max().item()


def test_kid_whole_sets_and_subsets():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, generator=g), torch.randn(40, 3, generator=g) + 0.5
    # subsets as large as both sets: the MMD^2 of the whole sets, no spread
    x30 = y[:30]
    mean, std = kid(x, x30, subsets=5, subset_size=100)
    assert mean == pytest.approx(mmd2_unbiased(x, x30).item(), rel=1e-12) and std == 0.0
    # random subsets: the subset U-statistic has the full one as expectation
    full = mmd2_unbiased(x, y).item()
    mean, std = kid(x, y, subsets=1000, subset_size=20, generator=torch.Generator().manual_seed(0))
    assert std > 0.1
    assert mean == pytest.approx(full, abs=3 * std / math.sqrt(1000))
    # the same generator seed gives the same subsets
    again = kid(x, y, subsets=1000, subset_size=20, generator=torch.Generator().manual_seed(0))
    assert again == (mean, std)


def test_mean_pairwise_distance_by_hand():
    # l2: the 3-4-5 triangle (0,0), (3,4), (0,4): distances 5, 3, 4 -> mean 4; group 2: 0 and 1 on a line
    f = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]], [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])
    out = mean_pairwise_distance(f)
    assert out.dtype == torch.float64 and out.shape == (2,)
    assert out.tolist() == pytest.approx([4.0, 4.0 / 3.0])  # group 2: 1, 2, 1
    # cosine: (1,0), (0,1), (2,2): 1 - cos = 1, 1 - 1/sqrt2, 1 - 1/sqrt2 (scale does not matter)
    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    expected = (1.0 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert mean_pairwise_distance(c, "cosine").item() == pytest.approx(expected)


@pytest.mark.parametrize("call, message", [
    (lambda: polynomial_kernel(torch.zeros(3), torch.zeros(2, 3)), r"x must be a 2-D tensor \[N, D\].*\[3\]"),
    (lambda: polynomial_kernel(torch.zeros(2, 3), torch.zeros(2, 4)), "same feature size D.*x \\[2, 3\\] and y \\[2, 4\\]"),
    (lambda: polynomial_kernel(torch.zeros(2, 3), torch.zeros(2, 3), degree=0), "degree must be an integer >= 1"),
    (lambda: mmd2_unbiased(torch.zeros(1, 3), torch.zeros(4, 3)), r"x needs at least 2 rows, got \[1, 3\]"),
    (lambda: kid(torch.zeros(4, 3), torch.zeros(4, 3), subsets=0), "subsets must be an integer >= 1"),
    (lambda: kid(torch.zeros(4, 3), torch.zeros(4, 3), subset_size=1), "subset_size must be an integer >= 2"),
    (lambda: mean_pairwise_distance(torch.zeros(4, 3)), r"features must be a 3-D tensor \[G, N, D\]"),
    (lambda: mean_pairwise_distance(torch.zeros(2, 1, 3)), "N >= 2 samples per group"),
    (lambda: mean_pairwise_distance(torch.zeros(2, 2, 3), "l1"), "distance must be one of \\['l2', 'cosine'\\]"),
])
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- features ---------------------------------------------------------------------------------
def test_toy_features_are_the_classifier_penultimate_layer():
    from treegrpo.toy import CLASSIFIER_WEIGHTS
    from treegrpo.toy.models import load_models

    classifier = load_models(CLASSIFIER_WEIGHTS, ("classifier",))["classifier"]
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = toy_features(classifier, images, batch_size=2)
    assert feats.shape == (5, classifier.config["hidden"])
    logits = classifier(images)
    for name, head in classifier.heads.items():  # the heads on these features give the logits
        torch.testing.assert_close(head(feats), logits[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"images must be a tensor \[L, 3, H, W\]"):
        toy_features(classifier, torch.rand(5, 1, 32, 32))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tools.make_tiny_models import main as make_tiny

    out = tmp_path_factory.mktemp("tiny")
    return make_tiny(["--out", str(out), "--models", "clip_reward"])["clip_reward"]


def test_clip_features_are_projected_image_embeddings(tiny_clip):
    from treegrpo.rewards.clip_family import image_embeds, load_clip_model
    from treegrpo.rewards.clip_preprocess import clip_preprocess

    model = load_clip_model(tiny_clip)
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    feats = clip_features(model, images, batch_size=2)
    assert feats.shape == (3, 16)
    with torch.no_grad():
        expected = image_embeds(model, clip_preprocess(images, 32))
    torch.testing.assert_close(feats, expected)


# --- the tool end to end ----------------------------------------------------------------------
TOY = "configs/treegrpo_toy_shapes.py"
PROMPTS = "data/toy_eval_prompts.txt"


def run(out, *extra, num_prompts=3):
    return diversity_main([TOY, "--prompts", PROMPTS, "--num-prompts", str(num_prompts), "--out", str(out),
                           "--kid-subsets", "20", "--kid-subset-size", "8", *extra])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("div")
    return out, run(out)


def test_tool_writes_consistent_finite_report(toy_run):
    out, result = toy_run
    saved = json.loads((out / "diversity.json").read_text())
    assert saved["kid"] == result["kid"] and saved["diversity"] == result["diversity"]
    setup = saved["setup"]
    assert (setup["k"], setup["depth"], setup["group_size"], setup["num_prompts"]) == (2, 3, 8, 3)
    assert setup["features"] == {"kind": "toy", "path": setup["features"]["path"], "dim": 256}
    assert set(saved["kid"]) == {"tree_vs_flat", "flat_vs_reference"}
    for value in [*saved["kid"].values(), saved["diversity"]["tree"], saved["diversity"]["flat"]]:
        assert math.isfinite(value["mean"]) and math.isfinite(value["std"]) and value["std"] >= 0
    assert saved["kid"]["tree_vs_flat"]["std"] > 0  # subsets of 8 of the 24 samples
    # summary = mean / population std of the per-prompt values
    for name in ("tree", "flat"):
        values = torch.tensor([row[name] for row in saved["per_prompt"]], dtype=torch.float64)
        assert values.min() > 0
        assert saved["diversity"][name]["mean"] == pytest.approx(values.mean().item())
        assert saved["diversity"][name]["std"] == pytest.approx(values.std(correction=0).item())
    assert saved["diversity"]["tree_over_flat"] == pytest.approx(
        saved["diversity"]["tree"]["mean"] / saved["diversity"]["flat"]["mean"])
    # NFE: flat = P * G * T; a tree = p + (1 + 2 + 4) + 8 * (T - p - 3) for window start p
    assert saved["nfe"]["flat"] == saved["nfe"]["reference"] == 3 * 8 * 10
    starts = [row["window_start"] for row in saved["per_prompt"]]
    assert all(0 <= p <= 3 for p in starts)  # the config's start_range
    assert saved["nfe"]["tree"] == sum(p + 7 + 8 * (10 - p - 3) for p in starts)
    # the markdown holds the json's numbers
    md = (out / "diversity.md").read_text()
    assert md == markdown_report(saved)
    kid_row = re.search(r"\| tree leaves vs flat samples \| (\S+) \| (\S+) \|", md)
    assert kid_row.groups() == (fmt(saved["kid"]["tree_vs_flat"]["mean"]), fmt(saved["kid"]["tree_vs_flat"]["std"]))
    tree_row = re.search(r"\| tree \| (\S+) \| (\S+) \|", md)
    assert float(tree_row.group(1)) == pytest.approx(saved["diversity"]["tree"]["mean"], rel=1e-3)
    assert "subsets of 8 of the 24 samples" in md


def test_tool_prompt_results_do_not_depend_on_other_prompts(toy_run, tmp_path):
    _, three = toy_run
    two = run(tmp_path, "--skip-reference", num_prompts=2)
    assert set(two["kid"]) == {"tree_vs_flat"} and "reference" not in two["nfe"]
    assert two["per_prompt"] == three["per_prompt"][:2]


def test_tool_with_clip_features(tiny_clip, tmp_path):
    result = run(tmp_path, "--features", "clip", "--clip-model", str(tiny_clip), "--distance", "cosine",
                 "--skip-reference", num_prompts=2)
    assert result["setup"]["features"]["kind"] == "clip" and result["setup"]["features"]["dim"] == 16
    assert math.isfinite(result["kid"]["tree_vs_flat"]["mean"])
    assert 0 < result["diversity"]["tree"]["mean"] < 2  # 1 - cos lies in [0, 2]


def test_tool_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, "--features", "clip")
    assert "--features clip needs --clip-model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--num-prompts 1000 exceeds the 180 prompts"):
        run(tmp_path, num_prompts=1000)
