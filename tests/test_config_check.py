"""The config check (treegrpo.config_check), hub ids and model-path errors, README snippets."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from treegrpo.config_check import ConfigError, check_components, main as check_main, validate_config
from treegrpo.inference import load_config
from treegrpo.policies.diffusers_common import (ModelNotFoundError, check_model_path, is_hub_id,
                                                load_pipeline)
from treegrpo.registry import REWARDS, build

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "treegrpo_toy_shapes.py"


def toy(**options):
    return load_config(TOY, options)


def problems_of(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


# ------------------------------------------------------------------ item 4: hub ids, messages
@pytest.mark.parametrize("hub_id", ["stabilityai/stable-diffusion-3.5-medium",
                                    "black-forest-labs/FLUX.1-dev", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_hub_ids_with_dots_are_hub_ids(hub_id):
    assert is_hub_id(hub_id) and check_model_path(hub_id) == "hub"


@pytest.mark.parametrize("path", ["./no_model", "/no/such/model", "~/no_model", "a/b/c", "model.safetensors",
                                  "C:\\models\\sd3", "a..b/c"])
def test_missing_local_paths_name_key_download_and_option(path):
    with pytest.raises(FileNotFoundError) as info:
        check_model_path(path)
    message = str(info.value)
    assert "policy.model_path" in message and "hf download" in message
    assert "--cfg-options policy.model_path=" in message


def test_existing_folder_is_local_even_when_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "model.v1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert check_model_path("org/model.v1") == "local"


def test_unloadable_hub_model_is_one_clear_error():
    """No machine here reaches the hub: diffusers' long network traceback becomes one error."""
    from diffusers import StableDiffusionPipeline

    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(StableDiffusionPipeline, "stable-diffusion-v1-5/stable-diffusion-v1-5", "float32")
    message = str(info.value)
    assert "policy.model_path='stable-diffusion-v1-5/stable-diffusion-v1-5'" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_local_folder_without_weights_names_key(tmp_path):
    from diffusers import StableDiffusionPipeline

    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", '
                                               '"unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ModelNotFoundError, match=r"policy.model_path=.*local folder.*hf download"):
        load_pipeline(StableDiffusionPipeline, str(tmp_path), "float32")


def test_headline_command_offline_ends_in_one_clear_error(tmp_path):
    weights = tmp_path / "hps.pt"
    weights.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "tools/train.py", "configs/treegrpo_sd3_hps.py", "--work-dir", str(tmp_path / "run"),
         "--cfg-options", f"reward.checkpoint={weights}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr  # one message, no traceback
    message = result.stderr.strip()
    assert message.startswith("error: config configs/treegrpo_sd3_hps.py has 1 problem(s)")
    assert "policy.model_path='stabilityai/stable-diffusion-3.5-medium'" in message
    assert "HF_HUB_OFFLINE" in message and "hf download stabilityai/stable-diffusion-3.5-medium" in message
    assert "--cfg-options policy.model_path=" in message


# ------------------------------------------------------------------ item 5: fail fast
def test_shipped_toy_configs_pass():
    for path in sorted((ROOT / "configs").glob("*toy*.py")) + sorted((ROOT / "configs" / "ablations").glob("*.py")):
        validate_config(load_config(path))


def test_every_problem_listed_at_once_with_key_and_fix(tmp_path):
    message = problems_of(toy(**{"prompts_per_iter": 0, "update.micro_batch_size": 0,
                                 "schedule.depth": 12, "train_dataset": dict(_delete_=True, type="PromptFile",
                                                                             path=str(tmp_path / "none.txt"))}))
    assert "4 problem(s)" in message
    assert "prompts_per_iter must be an integer > 0" in message
    assert "update.micro_batch_size must be an integer > 0" in message
    assert "depth must be in [1, 10]" in message and "sampler.num_steps=10" in message
    assert "train_dataset.path=" in message and "none.txt" in message and "cannot be read" in message


def test_window_start_range_must_fit_steps():
    message = problems_of(toy(**{"sampler.num_steps": 4}))  # depth 3, start_range (0, 3)
    assert "start_range must satisfy 0 <= lo <= hi <= 1" in message


def test_single_leaf_tree_is_an_error():
    message = problems_of(toy(**{"schedule.k": 1}))
    assert "schedule.k=1" in message and "zero" in message


def test_weighted_sum_weights_must_match_rewards():
    reward = dict(_delete_=True, type="WeightedSum", weights=[1.0],
                  rewards=[dict(type="MeanBrightnessReward"), dict(type="JPEGCompressibility")])
    message = problems_of(toy(reward=reward))
    assert "reward.weights must list one number per reward (2)" in message


def test_model_paths_plausible():
    message = problems_of(toy(**{"reward": dict(_delete_=True, type="HPSv2", checkpoint="weights/none.pt",
                                                clip_path="./no/clip")}))
    assert "reward.checkpoint='weights/none.pt' does not exist" in message
    assert "reward.clip_path='./no/clip' is neither an existing path nor a hub id" in message


def test_runner_checks_before_loading_anything(tmp_path, monkeypatch):
    from treegrpo import runner as runner_module

    monkeypatch.setattr(runner_module, "build", lambda *a, **k: pytest.fail("built a component"))
    with pytest.raises(ConfigError, match="prompts_per_iter"):
        runner_module.Runner(toy(prompts_per_iter=-1), tmp_path)


def test_command_line_check(capsys):
    assert check_main([str(TOY)]) == 0
    assert check_main([str(TOY), "--cfg-options", "max_iter=3"]) == 1
    assert "max_iters" in capsys.readouterr().out


# ------------------------------------------------------------------ item 6: misspelt keys
def test_unknown_top_level_key_lists_close_matches():
    message = problems_of(toy(max_iter=5))
    assert "unknown top-level key 'max_iter' (did you mean max_iters" in message


def test_unknown_component_argument_names_component_matches_and_accepted():
    message = problems_of(toy(**{"sampler.num_step": 8}))
    # close matches, best first
    assert "sampler.num_step is not an argument of TreeSampler (did you mean num_steps, suffix_steps?)" in message
    assert "TreeSampler accepts: chunk_size, guidance_scale, num_steps, suffix_steps" in message
    message = problems_of(toy(**{"reward.clasifier": "x"}))
    assert "reward.clasifier is not an argument of ToyAlignmentReward" in message


def test_unknown_hook_and_nested_arguments():
    cfg = toy()
    cfg.hooks[0]["intervall"] = 2
    cfg.hooks[1]["extra_rewards"]["jpeg"]["qualty"] = 90
    message = problems_of(cfg)
    assert "hooks[0].intervall is not an argument of LoggerHook (did you mean interval?)" in message
    assert "hooks[1].extra_rewards.jpeg.qualty is not an argument of JPEGCompressibility" in message


def test_ocr_engine_and_detector_arguments_are_checked():
    ocr = dict(_delete_=True, type="OCRReward", engine=dict(type="FixedTextEngine", text=["a"]))
    message = problems_of(toy(reward=ocr))
    assert "reward.engine.text is not an argument of FixedTextEngine (did you mean texts?)" in message
    assert "reward.engine.texts is required by FixedTextEngine" in message
    structured = dict(_delete_=True, type="StructuredReward", detector=dict(type="HTTPDetector", uri="http://x"))
    message = problems_of(toy(reward=structured))
    assert "reward.detector.uri is not an argument of HTTPDetector (did you mean url?)" in message


def test_kwargs_components_accept_anything():
    from treegrpo.config_check import accepted_arguments

    class Open:
        def __init__(self, a, **kwargs):
            pass

    assert accepted_arguments(Open) == (None, set())


# ------------------------------------------------------------------ item 7: README snippets
def readme_snippets() -> dict[str, list[str]]:
    """The python blocks of README's 'Custom rewards (plugins)' section, grouped by reward type."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Custom rewards (plugins)"):text.index("## Reward models")]
    snippets: dict[str, list[str]] = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        reward_type = re.search(r"reward = dict\(.*?type='(\w+)'", block, flags=re.S).group(1)
        snippets.setdefault(reward_type, []).append(block)
    return snippets


def child_config(tmp_path, body: str) -> Path:
    path = tmp_path / "child.py"
    path.write_text(f"_base_ = ['{TOY}']\n{body}")
    return path


@pytest.mark.parametrize("reward_type", ["Redness", "WeightedSum", "HTTPReward"])
def test_readme_snippet_pasted_into_toy_config_builds(tmp_path, monkeypatch, reward_type):
    for number, block in enumerate(readme_snippets()[reward_type]):
        check_snippet(tmp_path / str(number), monkeypatch, reward_type, block)


def check_snippet(tmp_path, monkeypatch, reward_type: str, block: str) -> None:
    """Paste one README block into a config inheriting the toy config; it must check and build."""
    tmp_path.mkdir()
    assert "_delete_=True" in block
    if "secret_env=" in block:  # the shared secret lives in an environment variable
        monkeypatch.setenv(re.search(r"secret_env='(\w+)'", block).group(1), "s" * 32)
    if "# in the config" in block:  # the plugin: its module goes to a temporary package
        module, _, block = block.partition("# in the config")
        block = "#" + block  # the rest of the comment line
        package = tmp_path / f"readme_plugin_{reward_type.lower()}"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "my_reward.py").write_text(module)
        monkeypatch.syspath_prepend(str(tmp_path))
        block = block.replace("plugins.my_reward", f"{package.name}.my_reward")
    cfg = load_config(child_config(tmp_path, block))
    assert check_components(cfg) == []
    assert type(build(REWARDS, cfg.reward)).__name__ == reward_type


def test_leftover_base_argument_says_where_it_comes_from(tmp_path):
    block = readme_snippets()["HTTPReward"][0].replace("_delete_=True, ", "")
    message = problems_of(load_config(child_config(tmp_path, block)))
    assert "reward.checkpoint is not an argument of HTTPReward" in message
    assert "it comes from the base config's reward" in message and "toy_alignment.py" in message
    assert "add _delete_=True to reward" in message

