"""overlap_reward: rollout t is scored in a background thread while rollout t+1 samples."""
import threading

import pytest
import torch

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.advantages import TreeBackup
from treegrpo.registry import ADVANTAGES, REWARDS, SAMPLERS
from treegrpo.samplers import TreeSampler

# The values of write_config(iters=3) before overlap_reward existed (commit 105ee05), overlap off.
BASELINE = [dict(reward=0.5060280561447144, policy_loss=-0.011034195616957732, grad_norm=0.29030945524573326),
            dict(reward=0.48830723762512207, policy_loss=-0.011847343295812607, grad_norm=0.44114668667316437),
            dict(reward=0.5389932990074158, policy_loss=-0.008867017866577953, grad_norm=0.3438876196742058)]
BASELINE_WEIGHT_SUM = -1.296508670784533


@SAMPLERS.register_module(force=True)
class SpyTreeSampler(TreeSampler):
    """TreeSampler that signals each call's start and records its rollout's image checksum."""

    started: list[threading.Event] = []
    images: list[float] = []

    @classmethod
    def reset(cls):
        cls.started, cls.images = [threading.Event() for _ in range(10)], []

    def sample(self, policy, kernel, prompts, plan, generator):
        SpyTreeSampler.started[len(SpyTreeSampler.images)].set()
        rollout = super().sample(policy, kernel, prompts, plan, generator)
        SpyTreeSampler.images.append(float(rollout.images.double().sum()))
        return rollout


@REWARDS.register_module(force=True)
class WaitsForNextSampleReward:
    """Brightness + 10 * call number (tags the rollout it scored). Scoring rollout n waits until
    the sampler of rollout n + 1 has started; it fails after ``timeout`` s instead of hanging."""

    timeout, iters = 10.0, 3
    scored: list[tuple[float, torch.Tensor]] = []

    def __call__(self, images, prompts):
        n = len(WaitsForNextSampleReward.scored)
        if n + 1 < self.iters and not SpyTreeSampler.started[n + 1].wait(self.timeout):
            raise TimeoutError(f"the sampler of rollout {n + 1} did not start while rollout {n} was scored")
        rewards = images.mean(dim=(1, 2, 3)) + 10.0 * n
        WaitsForNextSampleReward.scored.append((float(images.double().sum()), rewards.clone()))
        return rewards


@ADVANTAGES.register_module(force=True)
class RecordingBackup(TreeBackup):
    """TreeBackup that records the (rollout image checksum, rewards) it computes advantages of."""

    calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, rollout, rewards, *args):
        RecordingBackup.calls.append((float(rollout.images.double().sum()), rewards.detach().cpu().clone()))
        return super().__call__(rollout, rewards, *args)


def spied_config(tmp_path, name, overlap, iters=3, extra=""):
    SpyTreeSampler.reset()
    WaitsForNextSampleReward.scored, RecordingBackup.calls = [], []
    WaitsForNextSampleReward.iters = iters
    text = (f"sampler = dict(type='SpyTreeSampler', num_steps=5)\noverlap_reward = {overlap}\n"
            "hooks = [dict(type='LoggerHook', interval=1)]\n" + extra)
    return write_config(tmp_path, name=name, reward="WaitsForNextSampleReward", advantage="RecordingBackup",
                        iters=iters, extra=text)


def test_reward_runs_while_the_next_rollout_samples(tmp_path):
    WaitsForNextSampleReward.timeout = 10.0
    train_main([spied_config(tmp_path, "a.py", True), "--work-dir", str(tmp_path / "run")])
    assert len(SpyTreeSampler.images) == 3  # no rollout sampled for a 4th iteration
    # (c) iteration t computes advantages of rollout t with rollout t's rewards
    assert len(RecordingBackup.calls) == 3
    for t, (images, rewards) in enumerate(RecordingBackup.calls):
        assert images == SpyTreeSampler.images[t] == WaitsForNextSampleReward.scored[t][0]
        assert torch.equal(rewards, WaitsForNextSampleReward.scored[t][1])
    records = read_log(tmp_path / "run")
    assert [10 * t < r["reward/mean"] < 10 * t + 1 for t, r in enumerate(records)] == [True] * 3
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    assert records[0]["losses/onpolicy_ratio_max_dev"] < 1e-5  # the first rollout is on-policy
    assert "losses/stale_ratio_max_dev" in records[1] and "losses/onpolicy_ratio_max_dev" not in records[1]
    assert {"time/sample", "time/sample_overlap", "time/reward_wait", "time/reward_thread"} <= set(records[0])
    assert "time/sample" not in records[1] and "time/sample_overlap" not in records[2]
    nfe = [r["rollout/nfe"] for r in records]
    assert records[0]["charts/nfe_sample"] == nfe[0] + nfe[1]  # counted when spent
    assert records[2]["charts/nfe_sample"] == sum(nfe)


def test_without_overlap_the_reward_would_wait_in_vain(tmp_path):
    """The spy itself: scored before the next rollout samples, the first reward times out."""
    WaitsForNextSampleReward.timeout = 0.3
    with pytest.raises(TimeoutError, match="the sampler of rollout 1 did not start while rollout 0"):
        train_main([spied_config(tmp_path, "b.py", False), "--work-dir", str(tmp_path / "run")])
    WaitsForNextSampleReward.timeout = 10.0


def test_overlap_off_is_the_training_of_before(tmp_path):
    runs = {}
    for name, extra in [("absent", ""), ("off", "overlap_reward = False\n"), ("on", "overlap_reward = True\n")]:
        runner = train_main([write_config(tmp_path, name=f"{name}.py", iters=3, extra=extra),
                             "--work-dir", str(tmp_path / name)])
        runs[name] = read_log(tmp_path / name), runner.policy.denoiser.state_dict()
    for name in ("absent", "off"):
        records, weights = runs[name]
        assert [dict(reward=r["reward/mean"], policy_loss=r["losses/policy_loss"], grad_norm=r["update/grad_norm"])
                for r in records] == [pytest.approx(b, rel=1e-6) for b in BASELINE]
        assert float(sum(w.double().sum() for w in weights.values())) == pytest.approx(BASELINE_WEIGHT_SUM, rel=1e-9)
        assert "rollout/staleness" not in records[0] and "time/sample_overlap" not in records[0]
    assert all(torch.equal(runs["off"][1][k], runs["absent"][1][k]) for k in runs["off"][1])  # bit for bit
    # overlap on: the first iteration samples and trains the same rollout; later ones are stale
    on = runs["on"][0]
    assert on[0]["reward/mean"] == runs["off"][0][0]["reward/mean"]
    assert on[0]["losses/policy_loss"] == runs["off"][0][0]["losses/policy_loss"]
    assert on[1]["reward/mean"] != runs["off"][0][1]["reward/mean"]  # sampled before update 1


@REWARDS.register_module(force=True)
class CrashesInThreadReward:
    def __call__(self, images, prompts):
        raise OSError(f"reward server unreachable (scored in {threading.current_thread().name})")


def test_reward_thread_error_surfaces_in_the_main_thread(tmp_path):
    config = write_config(tmp_path, reward="CrashesInThreadReward",
                          extra="overlap_reward = True\nhooks = [dict(type='CheckpointHook', interval=1)]\n")
    with pytest.raises(OSError, match=r"reward server unreachable \(scored in treegrpo-reward"):
        train_main([config, "--work-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("treegrpo-reward")]  # shut down


def test_resume_with_overlap_samples_afresh_and_trains(tmp_path):
    extra = ("overlap_reward = True\n"
             "hooks = [dict(type='LoggerHook', interval=1), dict(type='CheckpointHook', interval=1)]\n")
    first = train_main([write_config(tmp_path, name="a.py", iters=2, extra=extra), "--work-dir", str(tmp_path / "b")])
    saved = {k: v.clone() for k, v in first.policy.denoiser.state_dict().items()}
    with pytest.warns(UserWarning, match=r"changed config keys \['max_iters'\]"):
        resumed = train_main([write_config(tmp_path, name="b.py", iters=4, extra=extra), "--work-dir",
                              str(tmp_path / "b"), "--resume", str(tmp_path / "b" / "checkpoints" / "iter_2")])
    assert resumed.iteration == 4 and resumed.pending is None and resumed.pool is None
    records = read_log(tmp_path / "b")
    assert [r["iter"] for r in records] == [1, 2, 3, 4]
    assert [r["rollout/staleness"] for r in records] == [0, 1, 0, 1]  # iteration 3 sampled afresh
    assert "time/sample" in records[2] and records[2]["losses/onpolicy_ratio_max_dev"] < 1e-5
    weights = resumed.policy.denoiser.state_dict()
    assert any(not torch.equal(weights[k], saved[k]) for k in saved)


def test_overlap_reward_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match="overlap_reward must be True or False, got 1"):
        train_main([write_config(tmp_path, extra="overlap_reward = 1\n"), "--work-dir", str(tmp_path / "run")])


def test_two_processes_overlap_and_fail_together(tmp_path):
    """Collectives run in the main threads after the join: 2 ranks train in step (identical
    weights), and a reward failing on rank 1 only stops both, each with a clear error."""
    import json

    from safetensors.torch import load_file
    from test_distributed import torchrun_worker

    for mode in ("train", "fail"):
        out = tmp_path / mode
        out.mkdir()
        result = torchrun_worker(str(out), mode, worker="dist_overlap_worker.py")
        assert result.returncode == 0, result.stderr[-3000:]
        ranks = [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in range(2)]
        assert all(r["pool_closed"] for r in ranks)
        if mode == "train":
            assert [r["error"] for r in ranks] == [None, None] and [r["iteration"] for r in ranks] == [3, 3]
            p0, p1 = (load_file(str(out / f"params_rank{r}.safetensors")) for r in range(2))
            assert all(torch.equal(p0[k], p1[k]) for k in p0)
        else:
            assert ranks[0]["error"] == "RewardError: reward 'FailsOnRank1Reward' failed on another process"
            assert ranks[1]["error"] == "RuntimeError: rank 1 reward backend down"
            assert [r["iteration"] for r in ranks] == [1, 1]  # the second iteration failed on both
