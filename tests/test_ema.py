"""EMAHook: the update rule by hand, checkpoint round trip, resume, evaluation with EMA weights."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.hooks.ema import EMAHook, ema_update_, warmup_decay
from treegrpo.inference import load_config, load_policy


def test_ema_update_and_warmup_by_hand():
    shadow = {"w": torch.tensor([1.0, 2.0])}
    ema_update_(shadow, {"w": torch.tensor([3.0, -2.0])}, decay=0.75)
    torch.testing.assert_close(shadow["w"], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25 * 2]))
    assert warmup_decay(0.99, 0) == pytest.approx(0.1)      # (1 + 0) / (10 + 0)
    assert warmup_decay(0.99, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match="decay must be in"):
        EMAHook(decay=1.0)


EMA = ("hooks = [dict(type='LoggerHook'), dict(type='EMAHook', decay=0.5, warmup=False, device='cpu'),\n"
       "         dict(type='EvalHook', interval=2, num_prompts=2, dataset=dict(type='PromptList', prompts=['a cat', 'a dog'])),\n"
       "         dict(type='CheckpointHook', interval=2, max_keep=0)]\n")


def test_ema_follows_the_weights_is_saved_and_used_for_eval(tmp_path):
    initial = load_policy(load_config(write_config(tmp_path, name="init.py")))[0].trainable_state_dict()
    runner = train_main([write_config(tmp_path, iters=2, extra=EMA), "--work-dir", str(tmp_path / "run")])
    ema = runner.ema
    assert ema is not None and ema.updates == 2
    ckpt = tmp_path / "run" / "checkpoints" / "iter_2"
    saved = load_file(str(ckpt / "ema.safetensors"))
    weights = runner.policy.trainable_state_dict()
    assert set(saved) == set(weights)
    # decay 0.5: shadow_2 = 0.25 * w0 + 0.25 * w1 + 0.5 * w2 lies strictly between the start and the end
    moved = [k for k in weights if not torch.equal(weights[k], initial[k])]
    assert moved and any(not torch.equal(saved[k], weights[k]) for k in moved)
    evals = [r for r in read_log(tmp_path / "run") if "eval/reward_mean" in r]
    assert [r["eval/ema"] for r in evals] == [1.0, 1.0]
    ema_policy, _ = load_policy(load_config(str(tmp_path / "run" / "config.py")), ckpt, ema=True)
    loaded = ema_policy.trainable_state_dict()
    assert all(torch.equal(loaded[k], saved[k].to(loaded[k].dtype)) for k in saved)
    with ema.applied(runner):  # swapped in ...
        assert all(torch.equal(p, saved[n]) for n, p in ema._params(runner).items())
    after = runner.policy.trainable_state_dict()  # ... and back
    assert all(torch.equal(after[k], weights[k]) for k in weights)


def test_ema_resumes_bit_identically(tmp_path):
    straight = train_main([write_config(tmp_path, iters=4, extra=EMA), "--work-dir", str(tmp_path / "a")])
    train_main([write_config(tmp_path, name="b.py", iters=2, extra=EMA), "--work-dir", str(tmp_path / "b")])
    resumed = train_main([write_config(tmp_path, name="b.py", iters=4, extra=EMA), "--work-dir",
                          str(tmp_path / "b"), "--resume", "auto"])
    assert resumed.ema.updates == straight.ema.updates == 4
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in straight.ema.shadow)


def test_ema_weights_need_an_ema_checkpoint(tmp_path):
    runner = train_main([write_config(tmp_path, iters=2), "--work-dir", str(tmp_path / "run")])
    assert runner.ema is None
    cfg = load_config(str(tmp_path / "run" / "config.py"))
    with pytest.raises(FileNotFoundError, match="no ema.safetensors.*EMAHook"):
        load_policy(cfg, tmp_path / "run", ema=True)
