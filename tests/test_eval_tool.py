"""tools/eval.py on the toy world: output files agree, scores do not depend on --batch-size,
eval_rewards / training reward / registered names resolve, unknown names fail clearly."""
import csv
import json
from pathlib import Path

import pytest
import torch

from tools.eval import main as eval_main
from treegrpo.checkpoint import save_checkpoint
from treegrpo.hooks.evaluation import generate, per_prompt_noise
from treegrpo.inference import load_config, load_policy
from treegrpo.toy.prompts import all_specs, spec_to_prompt
from treegrpo.utils import make_generator

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "treegrpo_toy_shapes.py")
REWARDS = "reward,JPEGCompressibility,jpeg10"
JPEG10 = ["eval_rewards.jpeg10.type=JPEGCompressibility", "eval_rewards.jpeg10.quality=10"]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("".join(spec_to_prompt(spec) + "\n" for spec in all_specs()[::180]))  # 5 prompts
    return path


def run(prompt_file, out, *extra, rewards=REWARDS):
    return eval_main([CONFIG, "--prompts", str(prompt_file), "--rewards", rewards, "--out", str(out),
                      "--num-steps", "4", "--seed", "7", *extra, "--cfg-options", *JPEG10])


@pytest.fixture(scope="module")
def batched(prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_b4")
    return out, run(prompt_file, out, "--batch-size", "4")


def test_writes_four_files_that_agree(batched, prompt_file):
    out, info = batched
    assert {p.name for p in out.iterdir()} == {"metrics.md", "metrics.csv", "metrics.json", "grid.png"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"] == CONFIG and saved["checkpoint"] is None and saved["seed"] == 7
    assert saved["num_steps"] == 4 and saved["guidance_scale"] == 1.0
    assert [p["prompt"] for p in saved["per_prompt"]] == prompt_file.read_text().splitlines()
    assert list(saved["rewards"]) == ["reward", "JPEGCompressibility", "jpeg10"]
    assert saved["rewards"]["reward"]["config"]["type"] == "ToyAlignmentReward"  # the config's reward
    assert saved["rewards"]["jpeg10"]["config"] == {"type": "JPEGCompressibility", "quality": 10}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    table = (out / "metrics.md").read_text().splitlines()
    assert table[0] == "| reward | mean | std | n |" and len(table) == 2 + 3
    for row, line in zip(rows, table[2:]):
        name = row["reward"]
        stats = saved["rewards"][name]
        per_prompt = torch.tensor([p["scores"][name] for p in saved["per_prompt"]], dtype=torch.float64)
        assert stats["n"] == 5 and int(row["n"]) == 5
        assert stats["mean"] == pytest.approx(per_prompt.mean().item(), abs=1e-6)
        assert stats["std"] == pytest.approx(per_prompt.std(correction=0).item(), abs=1e-6)
        assert float(row["mean"]) == stats["mean"] and float(row["std"]) == stats["std"]
        assert line == f"| {name} | {stats['mean']:.4f} | {stats['std']:.4f} | 5 |"
    assert 0.0 <= saved["rewards"]["reward"]["mean"] <= 1.0  # toy alignment is a probability
    # a lower JPEG quality gives smaller files: the eval_rewards entry really has quality 10
    for p in saved["per_prompt"]:
        assert p["scores"]["jpeg10"] > p["scores"]["JPEGCompressibility"]
    assert info == saved
    from PIL import Image

    assert Image.open(out / "grid.png").size == (5 * 34 + 2, 36)  # 5 toy images of 32 px, padding 2


def test_scores_do_not_depend_on_the_batch_size(batched, prompt_file, tmp_path):
    _, info = batched
    single = run(prompt_file, tmp_path, "--batch-size", "1")
    for a, b in zip(info["per_prompt"], single["per_prompt"]):
        assert a["noise_seed"] == b["noise_seed"]
        assert a["scores"]["reward"] == pytest.approx(b["scores"]["reward"], abs=1e-4)
        jpeg_a, jpeg_b = a["scores"]["JPEGCompressibility"], b["scores"]["JPEGCompressibility"]
        assert jpeg_a == pytest.approx(jpeg_b, abs=0.005)  # a few bytes if a rounding flips
    # different seeds per prompt: not all images are alike
    assert len({p["scores"]["JPEGCompressibility"] for p in single["per_prompt"]}) > 1


def test_a_checkpoint_changes_the_scores(batched, prompt_file, tmp_path):
    _, base = batched
    policy, _ = load_policy(load_config(CONFIG))
    state = {k: v + 0.05 * torch.randn_like(v, generator=torch.Generator().manual_seed(0))
             for k, v in policy.trainable_state_dict().items()}
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "iter_1", state, {}, {"iteration": 1})
    tuned = run(prompt_file, tmp_path / "out", "--batch-size", "4", "--checkpoint", str(ckpt),
                rewards="JPEGCompressibility")
    assert tuned["checkpoint"] == str(ckpt)
    before = [p["scores"]["JPEGCompressibility"] for p in base["per_prompt"]]
    after = [p["scores"]["JPEGCompressibility"] for p in tuned["per_prompt"]]
    assert before != after


def test_an_unknown_reward_name_lists_the_choices(prompt_file, tmp_path):
    with pytest.raises(ValueError) as info:
        run(prompt_file, tmp_path / "out", rewards="reward,NoSuchReward")
    message = str(info.value)
    assert "unknown reward name 'NoSuchReward'" in message
    assert "eval_rewards ['jpeg10']" in message and "'JPEGCompressibility'" in message
    assert "'ToyAlignmentReward'" in message
    assert not (tmp_path / "out").exists()  # fails before any sampling or writing
    with pytest.raises(ValueError, match="--rewards names 'reward' twice"):
        run(prompt_file, tmp_path / "out", rewards="reward,reward")


def test_reward_weights_and_arguments_are_checked_before_sampling(prompt_file, tmp_path, monkeypatch):
    import treegrpo.hooks.evaluation as evaluation

    monkeypatch.setattr(evaluation, "ode_integrate", lambda *a, **k: pytest.fail("sampled before failing"))
    with pytest.raises(ValueError, match=r"reward 'ImageReward'.*checkpoint.*eval_rewards = dict\(ImageReward="):
        run(prompt_file, tmp_path / "out", rewards="ImageReward")
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        eval_main([CONFIG, "--prompts", str(prompt_file), "--rewards", "aes", "--out", str(tmp_path / "out"),
                   "--cfg-options", "eval_rewards.aes.type=Aesthetic", "eval_rewards.aes.checkpoint=no_such.pth"])
    assert not (tmp_path / "out").exists()


def test_generate_from_explicit_noise_in_chunks():
    policy, kernel = load_policy(load_config(CONFIG))
    shape = policy.latent_shape
    noise = per_prompt_noise(shape, 7, 3)
    assert noise.shape == (3, *shape)
    assert torch.equal(noise[1], torch.randn(shape, generator=make_generator("cpu", 7, 1)))
    assert torch.equal(per_prompt_noise(shape, 7, 2), noise[:2])  # row i does not depend on the count
    prompts = [spec_to_prompt(spec) for spec in all_specs()[:3]]
    seeded = generate(policy, kernel, prompts, 3, 1.0, seed=5)  # noise drawn at once from seed 5
    same_noise = torch.randn((3, *shape), generator=make_generator("cpu", 5))
    chunked = generate(policy, kernel, prompts, 3, 1.0, seed=0, chunk_size=2, noise=same_noise, image_device="cpu")
    assert chunked.device.type == "cpu" and torch.allclose(chunked, seeded, atol=1e-5)
    assert not torch.allclose(generate(policy, kernel, prompts, 3, 1.0, seed=0, noise=noise), seeded, atol=1e-3)
    with pytest.raises(ValueError, match="noise must have shape"):
        generate(policy, kernel, prompts, 3, 1.0, seed=0, noise=noise[:2])


def test_normalized_reward_by_hand():
    from treegrpo.benchmarking import normalized_reward

    assert normalized_reward(0.30, base=0.25, maximum=1.0) == pytest.approx(0.05 / 0.75)
    assert normalized_reward(0.25, base=0.25, maximum=1.0) == 0.0
    with pytest.raises(ValueError, match="below the maximum"):
        normalized_reward(1.0, base=10.0, maximum=10.0)


def test_baseline_adds_the_papers_normalized_reward(prompt_file, tmp_path):
    from tools.make_tiny_models import main as make_tiny

    clip = make_tiny(["--out", str(tmp_path / "tiny"), "--models", "clip_reward"])["clip_reward"]
    options = ["--cfg-options", "eval_rewards.clip.type=CLIPScore", f"eval_rewards.clip.model={clip}",
               "eval_rewards.clip.w=1.0"]

    def evaluate(out, *extra):
        return eval_main([CONFIG, "--prompts", str(prompt_file), "--rewards", "clip,JPEGCompressibility",
                          "--out", str(out), "--num-steps", "4", *extra, *options])

    base = evaluate(tmp_path / "base", "--seed", "1")
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        evaluate(tmp_path / "x", "--baseline", str(tmp_path / "nowhere"))
    other = evaluate(tmp_path / "other", "--seed", "2", "--baseline", str(tmp_path / "base"))
    r, r_base = other["rewards"]["clip"]["mean"], base["rewards"]["clip"]["mean"]
    assert r != r_base
    assert other["rewards"]["clip"]["normalized"] == pytest.approx((r - r_base) / (1.0 - r_base))
    assert other["rewards"]["JPEGCompressibility"]["normalized"] is None  # no paper maximum
    table = (tmp_path / "other" / "metrics.md").read_text()
    assert "normalised" in table and f"{(r - r_base) / (1.0 - r_base):.4f}" in table
    assert "normalized" in (tmp_path / "other" / "metrics.csv").read_text().splitlines()[0]
