"""Every shipped config (ablations included) loads, builds and trains for two iterations on the\nreal toy world."""
import json
from pathlib import Path

import pytest
import torch

from tools.train import main as train_main
from treegrpo.inference import load_config

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "configs").glob("*.py"),
                                                          *(ROOT / "configs" / "ablations").glob("*.py")])
# the toy-world configs train here as they are; the others need model weights (dry runs below)
CONFIGS = [c for c in ALL_CONFIGS if load_config(str(ROOT / c), {}).policy["type"] == "ToyFlowPolicy"]
SMALL = ["max_iters=2", "prompts_per_iter=2", "hooks.1.num_prompts=4", "hooks.1.interval=2",
         "sampler.num_steps=6"]


def test_main_configs_exist():
    assert "configs/treegrpo_toy_shapes.py" in CONFIGS and "configs/grpo_toy_shapes.py" in CONFIGS
    assert "configs/treegrpo_sd35_jpeg.py" in ALL_CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_two_iterations(config, tmp_path):
    runner = train_main([str(ROOT / config), "--work-dir", str(tmp_path), "--cfg-options", *SMALL])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/reward_mean" in r]
    train = [r for r in records if "reward/mean" in r]
    assert [r["iter"] for r in evals] == [0, 2] and len(train) == 2
    low, high = (-1.0, 0.0) if "brightness" in config else (0.0, 1.0)  # reward ranges
    assert all(low <= r["eval/reward_mean"] <= high for r in evals)
    assert all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in train)
    assert (tmp_path / "eval" / "iter_000002.png").is_file()
    assert (tmp_path / "checkpoints" / "iter_2" / "model.safetensors").is_file()
    assert runner.iteration == 2


@pytest.mark.parametrize("pair", [("treegrpo_toy_shapes", "grpo_toy_shapes"), ("treegrpo_sd3_hps", "grpo_sd3_hps")])
def test_grpo_baseline_matches_the_tree_setup(pair):
    """Same prompts, images per prompt (G = k**d), window, reward, loss and optimizer as the tree
    (not the same forwards: the flat sampler spends more per iteration)."""
    tree = load_config(str(ROOT / f"configs/{pair[0]}.py"), {})
    flat = load_config(str(ROOT / f"configs/{pair[1]}.py"), {})
    assert flat.sampler.guidance_scale == tree.sampler.guidance_scale
    assert flat.sampler.group_size == tree.schedule.k ** tree.schedule.depth
    assert flat.sampler.num_steps == tree.sampler.num_steps
    for key in ("schedule", "reward", "optimizer", "prompts_per_iter", "max_iters", "loss", "update", "policy"):
        assert flat[key] == tree[key], key
    assert (flat.sampler.type, flat.advantage.type) == ("FlatSampler", "GroupNorm")
    assert (tree.sampler.type, tree.advantage.type) == ("TreeSampler", "TreeBackup")


TINY_OVERRIDES = ["max_iters=1", "prompts_per_iter=2", "policy.resolution=32", "policy.dtype=float32",
                  "mixed_precision=no", "sampler.num_steps=4", "schedule.start_range=(0,1)",
                  "schedule.depth=2", "hooks.1.interval=1"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tools.make_tiny_models import main as make_tiny

    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny"))])


def reward_overrides(config: str, clip: Path) -> list[str]:
    """Point the config's reward weights at the tiny random CLIP reward model."""
    hps = [f"checkpoint={clip}", f"clip_path={clip}", "dtype=float32"]
    if "clipscore" in config:
        return [f"reward.rewards.0.{o}" for o in hps] + [f"reward.rewards.1.model={clip}",
                                                          "reward.rewards.1.dtype=float32"]
    if "hps" in config:
        return [f"reward.{o}" for o in hps]
    if "aesthetic" in config:
        return [f"reward.checkpoint={clip / 'aesthetic_mlp.safetensors'}", f"reward.clip_model={clip}",
                "reward.dtype=float32"]
    return []


GPU_CONFIGS = {"treegrpo_sd3_hps": "sd3", "grpo_sd3_hps": "sd3", "treegrpo_sd3_hps_clipscore": "sd3",
               "treegrpo_sd35l_hps": "sd3",
               "treegrpo_flux_hps": "flux", "treegrpo_sd15_aesthetic": "sd15",
               "treegrpo_qwenimage_hps": "qwenimage"}


def test_every_non_toy_config_has_a_dry_run():
    non_toy = {Path(c).stem for c in ALL_CONFIGS if c not in CONFIGS}
    assert non_toy == set(GPU_CONFIGS) | {"treegrpo_sd35_jpeg", "treegrpo_wan_t2v", "treegrpo_flux_kontext_edit"}


@pytest.mark.parametrize("config", sorted(GPU_CONFIGS))
def test_gpu_config_dry_runs_on_tiny_local_models(config, tiny_models, tmp_path):
    """The shipped GPU configs (real rewards, LoRA, eval hook) run one iteration on the tiny
    random-weight generator and reward models that tools/make_tiny_models.py writes."""
    overrides = [f"policy.model_path={tiny_models[GPU_CONFIGS[config]]}", *TINY_OVERRIDES,
                 *reward_overrides(config, tiny_models["clip_reward"])]
    runner = train_main([str(ROOT / "configs" / f"{config}.py"), "--work-dir", str(tmp_path),
                         "--cfg-options", *overrides])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "reward/mean" in r]
    assert runner.iteration == 1 and len(train) == 1
    assert torch.isfinite(torch.tensor(train[0]["losses/loss"]))
    if "clipscore" in config:
        assert {"reward/hps", "reward/clipscore"} <= set(train[0])
    assert (tmp_path / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_sd35_config_dry_runs_on_a_tiny_local_model(tiny_models, tmp_path):
    runner = train_main([str(ROOT / "configs/treegrpo_sd35_jpeg.py"), "--work-dir", str(tmp_path),
                         "--cfg-options", f"policy.model_path={tiny_models['sd3']}", *TINY_OVERRIDES])
    assert type(runner.policy).__name__ == "SD3Policy" and runner.iteration == 1
    assert (tmp_path / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_wan_config_dry_runs_on_a_tiny_local_model(tiny_models, tmp_path):
    clip = tiny_models["clip_reward"]
    hps = [f"reward.rewards.0.reward.{o}" for o in (f"checkpoint={clip}", f"clip_path={clip}", "dtype=float32")]
    overrides = [f"policy.model_path={tiny_models['wan']}", "policy.height=16", "policy.width=16",
                 "policy.num_frames=5", "policy.max_sequence_length=16",
                 *[o for o in TINY_OVERRIDES if not o.startswith("policy.resolution")], *hps]
    runner = train_main([str(ROOT / "configs/treegrpo_wan_t2v.py"), "--work-dir", str(tmp_path),
                         "--cfg-options", *overrides])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert type(runner.policy).__name__ == "WanPolicy" and runner.iteration == 1
    assert {"reward/hps", "reward/temporal"} <= set(records[-1])
    assert (tmp_path / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_kontext_config_dry_runs_on_a_tiny_local_model(tiny_models, tmp_path):
    """The edit config trains one iteration on the tiny FLUX Kontext with a jsonl of image paths."""
    from PIL import Image

    folder = tmp_path / "edit"
    (folder / "in").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (40, 24), colour).save(folder / "in" / f"{i}.png")  # resized to image_size
    (folder / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"make it {c}", "image": f"in/{i}.png"}) + "\n" for i, c in enumerate(("green", "pink"))))
    overrides = [f"policy.model_path={tiny_models['flux_kontext']}", *TINY_OVERRIDES, "policy.image_size=32",
                 f"policy.image_root={folder}", f"train_dataset.path={folder / 'prompts.jsonl'}",
                 *reward_overrides("hps", tiny_models["clip_reward"])]
    runner = train_main([str(ROOT / "configs/treegrpo_flux_kontext_edit.py"), "--work-dir", str(tmp_path / "run"),
                         "--cfg-options", *overrides])
    assert type(runner.policy).__name__ == "FluxKontextPolicy" and runner.iteration == 1
    assert runner.policy.image_cache.encoded == 2
    assert (tmp_path / "run" / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_sd15_base_dry_runs_on_a_tiny_local_model(tiny_models, tmp_path):
    config = tmp_path / "treegrpo_sd15_jpeg.py"
    base = ROOT / "configs" / "_base_"
    config.write_text(f"""_base_ = ['{base}/models/sd15.py', '{base}/samplers/tree.py',
          '{base}/schedules/random_window.py', '{base}/default_runtime.py']
reward = dict(type='JPEGCompressibility')
train_dataset = dict(type='PromptFile', path='{ROOT}/data/prompts.txt')
hooks = [dict(type='LoggerHook'), dict(type='CheckpointHook', interval=1)]
max_iters = 1
prompts_per_iter = 2
""")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"),
                         "--cfg-options", f"policy.model_path={tiny_models['sd15']}", *TINY_OVERRIDES])
    assert type(runner.policy).__name__ == "StableDiffusionPolicy"
    assert type(runner.kernel).__name__ == "DDIMKernel" and runner.iteration == 1
