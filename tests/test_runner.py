"""Integration tests of the training loop on the tiny random-weight test policy."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.rewards.base import RewardError
from treegrpo.registry import LOSSES, REWARDS

@pytest.mark.parametrize("sampler,advantage", [("TreeSampler", "TreeBackup"), ("FlatSampler", "GroupNorm")])
def test_training_writes_logs_checkpoints_and_changes_weights(tmp_path, sampler, advantage):
    config = write_config(tmp_path, sampler=sampler, advantage=advantage)
    work = tmp_path / "run"
    runner = train_main([config, "--work-dir", str(work)])
    assert (work / "config.py").is_file()
    assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    records = read_log(work)
    assert [r["iter"] for r in records] == [1, 2]
    for key in ("reward/mean", "rollout/nfe", "update/nfe", "rollout/edges", "losses/policy_loss",
                "losses/approx_kl", "losses/clip_frac", "time/sample", "time/reward", "time/update", "lr"):
        assert key in records[-1], key
        assert torch.isfinite(torch.tensor(float(records[-1][key])))
    # the first ratio of an iteration is on-policy
    assert records[0]["losses/onpolicy_ratio_max_dev"] < 1e-5
    ckpt = work / "checkpoints" / "iter_2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "model.safetensors", "training_state.pt"]
    assert not list((work / "checkpoints").glob("*.tmp-*"))
    saved = load_file(str(ckpt / "model.safetensors"))
    from tests.conftest import TinyTestPolicy

    initial = TinyTestPolicy().denoiser.state_dict()
    assert set(saved) == set(initial)
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)
    # tree: one training forward per parent; flat: one per SDE step of each chain
    expected_update_nfe = 2 * 3 * 2 if sampler == "TreeSampler" else 2 * 4 * 2 * 2
    assert records[0]["update/nfe"] == expected_update_nfe
    assert runner.iteration == 2


def test_kl_to_reference_is_logged(tmp_path):
    extra = ("policy = dict(type='TinyTestPolicy', keep_reference=True)\n"
             "update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=16)\n")
    config = write_config(tmp_path, beta=0.1, extra=extra)
    train_main([config, "--work-dir", str(tmp_path / "run")])
    records = read_log(tmp_path / "run")
    assert records[0]["losses/kl"] == pytest.approx(0.0, abs=1e-12)  # one step, before it policy == reference
    assert records[1]["losses/kl"] > 0


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a test that changes mixed precision resets it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_reference_matches_policy_under_bf16_autocast(tmp_path, fresh_accelerate_state):
    """With mixed precision the frozen reference runs under the same autocast: KL starts at 0."""
    extra = ("policy = dict(type='TinyTestPolicy', keep_reference=True)\n"
             "update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=16)\n"
             "mixed_precision = 'bf16'\n")
    train_main([write_config(tmp_path, beta=0.1, extra=extra), "--work-dir", str(tmp_path / "run")])
    records = read_log(tmp_path / "run")
    assert records[0]["losses/kl"] == 0.0
    assert records[1]["losses/kl"] > 0


@REWARDS.register_module(force=True)
class NaNAfterFirstCall:
    calls = 0

    def __call__(self, images, prompts):
        NaNAfterFirstCall.calls += 1
        scores = images.mean(dim=(1, 2, 3))
        if NaNAfterFirstCall.calls > 1:
            scores[1] = float("nan")
        return scores


def test_nan_reward_stops_training_without_checkpoint(tmp_path):
    NaNAfterFirstCall.calls = 0
    config = write_config(tmp_path, reward="NaNAfterFirstCall", iters=4,
                          extra="hooks = [dict(type='CheckpointHook', interval=1)]\n")
    with pytest.raises(RewardError, match="NaNAfterFirstCall") as info:
        train_main([config, "--work-dir", str(tmp_path / "run")])
    assert "1 NaN at indices [1]" in str(info.value)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["iter_1"]  # iteration 2 failed: nothing written for it


def test_unknown_type_and_missing_key_errors(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(KeyError, match=r"unknown reward type 'NoSuchReward'.*MeanBrightnessReward"):
        train_main([config, "--work-dir", str(tmp_path / "x"), "--cfg-options", "reward.type=NoSuchReward"])
    text = Path(config).read_text().replace("prompts_per_iter = 2\n", "")
    Path(config).write_text(text)
    with pytest.raises(KeyError, match="prompts_per_iter"):
        train_main([config, "--work-dir", str(tmp_path / "y")])
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        train_main([str(tmp_path / "no_such_config.py")])


def test_cfg_options_and_seed_override(tmp_path):
    config = write_config(tmp_path)
    runner = train_main([config, "--work-dir", str(tmp_path / "run"), "--seed", "11",
                         "--cfg-options", "max_iters=1", "sampler.num_steps=4"])
    assert runner.seed == 11 and runner.iteration == 1 and runner.sampler.num_steps == 4
    dumped = (tmp_path / "run" / "config.py").read_text()
    assert "max_iters = 1" in dumped and "seed = 11" in dumped


def test_plugin_reward_from_custom_imports_trains(tmp_path):
    """A reward registered outside the package (plugins/) is used through custom_imports."""
    extra = ("custom_imports = dict(imports=['plugins.example_reward'], allow_failed_imports=False)\n"
             "reward = dict(type='BrightnessReward', target=0.9)\n")
    config = write_config(tmp_path, extra=extra)
    runner = train_main([config, "--work-dir", str(tmp_path / "run")])
    assert type(runner.reward).__name__ == "BrightnessReward" and runner.reward.target == 0.9
    records = read_log(tmp_path / "run")
    assert len(records) == 2 and records[0]["reward/mean"] <= 0  # -|brightness - target|


def test_config_inheritance_changes_one_key(tmp_path):
    write_config(tmp_path, name="base.py")
    child = tmp_path / "child.py"
    child.write_text("_base_ = ['./base.py']\nschedule = dict(k=3)\nmax_iters = 1\n")
    runner = train_main([str(child), "--work-dir", str(tmp_path / "run")])
    assert runner.schedule.k == 3 and runner.schedule.depth == 2
    records = read_log(tmp_path / "run")
    assert records[0]["rollout/leaves"] == 2 * 3**2


@REWARDS.register_module(force=True)
class CrashingReward:
    def __call__(self, images, prompts):
        raise OSError("reward server unreachable")


@REWARDS.register_module(force=True)
class WrongShapeReward:
    def __call__(self, images, prompts):
        return images.mean(dim=(2, 3))  # [L, 3] instead of [L]


@pytest.mark.parametrize("reward,error,message", [
    ("CrashingReward", OSError, "reward server unreachable"),
    ("WrongShapeReward", RewardError, "WrongShapeReward"),
])
def test_failing_rewards_stop_training(tmp_path, reward, error, message):
    config = write_config(tmp_path, reward=reward, extra="hooks = [dict(type='CheckpointHook', interval=1)]\n")
    with pytest.raises(error, match=message):
        train_main([config, "--work-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoints").exists()


@LOSSES.register_module(force=True)
class NaNLoss:
    needs_reference = False

    def __call__(self, log_prob_new, log_prob_old, advantages, kl=None):
        return log_prob_new.sum() * float("nan"), {"ratio_max_dev": 0.0}


def test_non_finite_loss_stops_before_the_update(tmp_path):
    config = write_config(tmp_path, extra="loss = dict(type='NaNLoss')\n")
    with pytest.raises(FloatingPointError, match="non-finite loss nan at iteration 1"):
        train_main([config, "--work-dir", str(tmp_path / "run")])


def test_nfe_budget_stops_training(tmp_path):
    config = write_config(tmp_path, iters=50, extra="max_nfe = 100\n")
    runner = train_main([config, "--work-dir", str(tmp_path / "run")])
    records = read_log(tmp_path / "run")
    spent = [r["charts/nfe_sample"] + r["charts/nfe_update"] for r in records]
    assert spent[-1] >= 100 and spent[-2] < 100  # stopped right after crossing the budget
    assert runner.iteration == len(records) < 50


def test_per_step_batches_train(tmp_path):
    extra = "update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=2, per_step_batches=True)\n"
    runner = train_main([write_config(tmp_path, extra=extra), "--work-dir", str(tmp_path / "run")])
    records = read_log(tmp_path / "run")
    assert records[0]["losses/onpolicy_ratio_max_dev"] == 0.0
    assert records[0]["update/nfe"] == 2 * 3 and runner.iteration == 2  # one forward per parent


@REWARDS.register_module(force=True)
class BrightnessWithPartsReward:
    """Mean brightness that also reports the mean of its red channel via ``log_values``."""

    def __call__(self, images, prompts):
        self.red = images[:, 0].mean().item()
        return images.mean(dim=(1, 2, 3))

    def log_values(self):
        return {"reward/red": self.red}


def test_reward_log_values_reach_the_log(tmp_path):
    runner = train_main([write_config(tmp_path, reward="BrightnessWithPartsReward", iters=1),
                         "--work-dir", str(tmp_path / "run")])
    record = read_log(tmp_path / "run")[0]
    assert record["reward/red"] == pytest.approx(runner.reward.red)
    assert 0.0 <= record["reward/red"] <= 1.0


def test_missing_reward_weights_fail_at_start_up(tmp_path):
    extra = "reward = dict(type='Aesthetic', checkpoint='weights/no_such_aesthetic.pth')\n"
    with pytest.raises(ValueError, match="no_such_aesthetic.pth.*Aesthetic weights"):  # config check
        train_main([write_config(tmp_path, extra=extra), "--work-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "log.jsonl").exists()  # failed before the first rollout


def test_a_failed_start_leaves_no_run_folder(tmp_path, monkeypatch):
    import tools.train as train_tool

    monkeypatch.setattr(train_tool, "ROOT", tmp_path)
    extra = "reward = dict(type='Aesthetic', checkpoint='weights/no_such_aesthetic.pth')\n"
    with pytest.raises(ValueError, match="no_such_aesthetic.pth"):  # refused by the config check
        train_main([write_config(tmp_path, name="fails.py", extra=extra)])
    assert not (tmp_path / "work_dirs" / "fails").exists() or not list((tmp_path / "work_dirs" / "fails").iterdir())


def test_weighted_sum_loads_its_parts_at_start_up(tmp_path):
    extra = ("reward = dict(type='WeightedSum', weights=[1.0, 0.5], rewards=[\n"
             "    dict(type='MeanBrightnessReward'),\n"
             "    dict(type='Aesthetic', checkpoint='weights/no_such_aesthetic.pth')])\n")
    with pytest.raises(ValueError, match=r"reward.rewards\[1\].checkpoint='weights/no_such_aesthetic.pth'"):
        train_main([write_config(tmp_path, extra=extra), "--work-dir", str(tmp_path / "run")])


def test_wandb_gets_the_config_and_every_scalar(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    extra = "wandb = dict(project='treegrpo-tests', name='tiny')\n"
    train_main([write_config(tmp_path, extra=extra), "--work-dir", str(tmp_path / "run")])
    init = calls[0][1]
    assert (init["project"], init["name"], init["dir"]) == ("treegrpo-tests", "tiny", str(tmp_path / "run"))
    assert init["config"]["sampler"]["type"] == "TreeSampler"
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [1, 2] and calls[-1] == ("finish",)
    assert logs[0][2]["reward/mean"] == read_log(tmp_path / "run")[0]["reward/mean"]


def test_wandb_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        train_main([write_config(tmp_path, extra="wandb = dict(project='x')\n"), "--work-dir", str(tmp_path / "r")])


@LOSSES.register_module(force=True)
class ScriptedRatioLoss:
    """GRPOClipLoss whose reported ``ratio_max_dev`` follows a script, one value per call (per
    micro-batch): only the second micro-batch of the first optimizer step deviates."""

    needs_reference = False
    script = [0.0, 0.25, 0.0, 0.9, 0.9, 0.9]
    calls = 0

    def __call__(self, log_prob_new, log_prob_old, advantages, kl=None):
        from treegrpo.losses.grpo import GRPOClipLoss

        loss, stats = GRPOClipLoss(clip_range=0.2)(log_prob_new, log_prob_old, advantages, kl)
        stats["ratio_max_dev"] = ScriptedRatioLoss.script[ScriptedRatioLoss.calls]
        ScriptedRatioLoss.calls += 1
        return loss, stats


def test_onpolicy_metric_covers_every_micro_batch_before_the_first_step(tmp_path):
    """6 parents, 2 optimizer steps of 3 one-parent micro-batches: the metric is the max over the
    first step's 3 micro-batches (0.25), not the first one's (0.0) nor a later step's (0.9)."""
    ScriptedRatioLoss.calls = 0
    extra = ("loss = dict(type='ScriptedRatioLoss')\n"
             "update = dict(num_inner_epochs=1, num_minibatches=2, micro_batch_size=1)\n")
    train_main([write_config(tmp_path, iters=1, extra=extra), "--work-dir", str(tmp_path / "run")])
    assert ScriptedRatioLoss.calls == 6
    assert read_log(tmp_path / "run")[0]["losses/onpolicy_ratio_max_dev"] == 0.25



def test_train_tool_closes_the_process_group_when_training_fails(tmp_path, monkeypatch):
    """A failing run (here: the reward backend) closes accelerate's process group before the error
    propagates, so distributed processes exit with the error instead of aborting."""
    from accelerate import Accelerator

    from treegrpo.runner import Runner

    def fail(self):
        raise RuntimeError("reward backend down")

    closed = []
    monkeypatch.setattr(Runner, "train", fail)
    monkeypatch.setattr(Accelerator, "end_training", lambda self: closed.append(self))
    with pytest.raises(RuntimeError, match="reward backend down"):
        train_main([write_config(tmp_path), "--work-dir", str(tmp_path / "run")])
    assert len(closed) == 1 and isinstance(closed[0], Accelerator)
