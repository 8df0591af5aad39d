"""Resume and run folders: bit-identical continuation, --resume auto, unique run folders, a resumed
run's config and logs (each iteration logged once), checkpoints outside a run folder."""
import time
from pathlib import Path

import pytest
import torch

from conftest import read_log, write_config
from tools.train import main as train_main


def test_resume_continues_bit_identically(tmp_path):
    straight = train_main([write_config(tmp_path, iters=4), "--work-dir", str(tmp_path / "a")])
    first = train_main([write_config(tmp_path, name="b.py", iters=2), "--work-dir", str(tmp_path / "b")])
    assert first.iteration == 2
    resumed = train_main([write_config(tmp_path, name="b.py", iters=4), "--work-dir", str(tmp_path / "b"),
                          "--resume", str(tmp_path / "b" / "checkpoints" / "iter_2")])
    a = straight.policy.trainable_state_dict()
    b = resumed.policy.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = straight.optimizer.state_dict()["state"]
    sb = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["reward/mean"] for r in log_a] == [r["reward/mean"] for r in log_b]
    assert log_b[-1]["charts/nfe_sample"] == log_a[-1]["charts/nfe_sample"]


def test_resume_auto_finds_the_newest_run(tmp_path, monkeypatch):
    import tools.train as train_tool

    monkeypatch.setattr(train_tool, "ROOT", tmp_path)
    config = write_config(tmp_path, name="auto_cfg.py", iters=2)
    monkeypatch.setenv("TREEGRPO_RUN_STAMP", "20260101_000000")
    first = train_main([config])
    run_dir = first.work_dir
    assert run_dir.parent == tmp_path / "work_dirs" / "auto_cfg" and run_dir.name.startswith("20260101_000000_seed3_")
    assert (run_dir / "checkpoints" / "iter_2").is_dir()
    resumed = train_main([config, "--resume", "--cfg-options", "max_iters=3"])
    assert resumed.work_dir == run_dir and resumed.iteration == 3
    assert [r["iter"] for r in read_log(run_dir)] == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="found no checkpoint under work_dirs/other"):
        train_tool.find_resume("other", "auto")
    # with --work-dir, 'auto' looks there
    assert train_tool.find_resume("x", "auto", str(run_dir)) == run_dir / "checkpoints" / "iter_3"


def test_prompt_stat_tracking_resumes_bit_identically(tmp_path):
    extra = "advantage = dict(type='TreeBackup', stat_tracking=dict(buffer_size=16, min_count=4))\n"
    straight = train_main([write_config(tmp_path, iters=4, extra=extra), "--work-dir", str(tmp_path / "a")])
    train_main([write_config(tmp_path, name="b.py", iters=2, extra=extra), "--work-dir", str(tmp_path / "b")])
    resumed = train_main([write_config(tmp_path, name="b.py", iters=4, extra=extra), "--work-dir",
                          str(tmp_path / "b"), "--resume", "auto"])
    history = straight.advantage.tracker.history
    assert history and {k: list(v) for k, v in resumed.advantage.tracker.history.items()} == \
        {k: list(v) for k, v in history.items()}
    a, b = straight.policy.trainable_state_dict(), resumed.policy.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import tools.train as train_tool

    monkeypatch.setattr(train_tool, "ROOT", tmp_path)
    monkeypatch.setenv("TREEGRPO_RUN_STAMP", "20260101_000000")  # the same second for both
    config = write_config(tmp_path, name="same.py")
    first, second = train_main([config]), train_main([config])
    assert first.work_dir != second.work_dir
    assert sorted(p.name[:21] for p in (tmp_path / "work_dirs" / "same").iterdir()) == ["20260101_000000_seed3"] * 2
    for run in (first.work_dir, second.work_dir):
        assert [r["iter"] for r in read_log(run)] == [1, 2]  # no interleaved logs


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_resume_after_a_crash_keeps_config_and_logs_each_iteration_once(tmp_path):
    """A run that reached iteration 3 and resumes from iter_2 with another lr: iteration 3 is
    redone and logged once, config.py keeps the original options, the new ones are beside it."""
    config = write_config(tmp_path, iters=3)
    run = tmp_path / "run"
    train_main([config, "--work-dir", str(run)])
    (run / "checkpoints" / "iter_3.tmp-4242").mkdir()  # a save killed halfway
    (run / "checkpoints" / "iter_3.tmp-4242" / "model.safetensors").write_bytes(b"half")
    original = (run / "config.py").read_text()
    # tensorboard reads event files in name order: <seconds>.<host>.<pid>.<writer count>; two files
    # of one second from one process sort wrongly when the count gains a digit (99 -> 100)
    time.sleep(1.05)
    with pytest.warns(UserWarning, match=r"changed config keys \['optimizer.lr'\].*config_resume_2.py"):
        train_main([config, "--work-dir", str(run), "--resume", str(run / "checkpoints" / "iter_2"),
                    "--cfg-options", "optimizer.lr=0.02"])
    assert (run / "config.py").read_text() == original
    assert "lr=0.02" in (run / "config_resume_2.py").read_text()
    assert [r["iter"] for r in read_log(run)] == [1, 2, 3]
    assert tensorboard_steps(run, "reward/mean") == [1, 2, 3]
    assert not list((run / "checkpoints").glob("*.tmp-*"))


def test_unchanged_resume_writes_no_second_config(tmp_path):
    config = write_config(tmp_path, iters=2)
    train_main([config, "--work-dir", str(tmp_path / "run")])
    train_main([config, "--work-dir", str(tmp_path / "run"), "--resume", "auto"])
    assert sorted(p.name for p in (tmp_path / "run").glob("config*.py")) == ["config.py"]


def test_checkpoint_outside_a_run_resumes_into_a_new_run(tmp_path, monkeypatch):
    import shutil

    import tools.train as train_tool

    monkeypatch.setattr(train_tool, "ROOT", tmp_path / "repo")
    config = write_config(tmp_path, name="loose.py", iters=2)
    train_main([config, "--work-dir", str(tmp_path / "run")])
    loose = tmp_path / "downloads" / "iter_2"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "iter_2", loose)
    resumed = train_main([config, "--resume", str(loose), "--cfg-options", "max_iters=3"])
    assert resumed.work_dir.parent == tmp_path / "repo" / "work_dirs" / "loose"
    assert [r["iter"] for r in read_log(resumed.work_dir)] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "loose.py", "repo", "run"]
