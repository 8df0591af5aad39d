import json

import pytest
import torch

from treegrpo import checkpoint as ckpt


def test_round_trip_and_resolve(tmp_path):
    run = tmp_path / "run"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    training = {"optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
                "lr_scheduler": {}, "torch_rng": torch.get_rng_state()}
    for it in (2, 10, 4):
        ckpt.save_checkpoint(run / "checkpoints" / f"iter_{it}", state, training, {"iteration": it})
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["iter_2", "iter_4", "iter_10"]
    assert ckpt.resolve_checkpoint(run).name == "iter_10"  # numeric, not lexical, order
    model, loaded, meta = ckpt.load_checkpoint(run / "checkpoints" / "iter_4")
    assert torch.equal(model["w"], state["w"]) and meta == {"iteration": 4}
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], torch.tensor(3.0))


def test_interrupted_save_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "iter_5"

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(target, {"w": torch.ones(2)}, {"x": 1}, {"iteration": 5})
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no iter_5, no temp folder


def test_incomplete_checkpoint_is_refused(tmp_path):
    broken = tmp_path / "iter_3"
    broken.mkdir()
    (broken / "meta.json").write_text(json.dumps({"iteration": 3}))
    with pytest.raises(FileNotFoundError, match=r"missing \['model.safetensors', 'training_state.pt'\]"):
        ckpt.load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        ckpt.resolve_checkpoint(tmp_path / "empty_run")


# --- damaged and mismatched checkpoints on disk ----------------------------------------------
TINY = dict(policy=dict(type="TinyTestPolicy"), kernel=dict(type="FlowMatchingKernel", eta=0.8),
            reward=dict(type="MeanBrightnessReward"),
            hooks=[dict(type="CheckpointHook", interval=1), dict(type="EMAHook", decay=0.5)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, checkpoint folder) of a one-iteration tiny run with an EMA."""
    from tests.conftest import write_run_config
    from tools.train import main as train_main

    root = tmp_path_factory.mktemp("trained")
    config = write_run_config(root / "tiny.py", **TINY)
    train_main([str(config), "--work-dir", str(root / "run")])
    return config, root / "run" / "checkpoints" / "iter_1"


@pytest.fixture
def damaged(trained, tmp_path):
    """A fresh copy of the trained checkpoint, to corrupt."""
    import shutil

    folder = tmp_path / "checkpoints" / "iter_1"
    shutil.copytree(trained[1], folder)
    return folder


def edit_weights(path, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


WEIGHT_DAMAGE = {  # name -> (edit of model.safetensors, what the error says)
    "broadcastable shape": (lambda s: s.update({"text.weight": s["text.weight"][:1]}),
                            r"'text.weight' in .*iter_1/model.safetensors has shape \[1, 4\], .* \[2, 4\]"),
    "missing key": (lambda s: s.pop("conv.bias"), r"missing \['conv.bias'\] \(1\), unexpected \[\] \(0\)"),
    "unexpected key": (lambda s: s.update({"extra.weight": torch.ones(2)}), r"unexpected \['extra.weight'\]"),
    "integer dtype": (lambda s: s.update({"conv.bias": torch.ones(2, dtype=torch.int64)}),
                      r"'conv.bias' in .*model.safetensors has dtype torch.int64"),
}


@pytest.mark.parametrize("damage", sorted(WEIGHT_DAMAGE))
def test_mismatched_weights_are_refused_by_resume_and_eval(trained, damaged, damage, tmp_path):
    from tools.train import main as train_main
    from treegrpo.inference import load_config, load_policy

    edit, message = WEIGHT_DAMAGE[damage]
    edit_weights(damaged / "model.safetensors", edit)
    with pytest.raises(ckpt.CheckpointError, match=message):
        load_policy(load_config(trained[0]), damaged)
    with pytest.raises(ckpt.CheckpointError, match=message):
        train_main([str(trained[0]), "--resume", str(damaged), "--work-dir", str(tmp_path / "resumed"),
                    "--cfg-options", "max_iters=2"])


def test_mismatched_ema_weights_are_refused(trained, damaged):
    from treegrpo.inference import load_config, load_policy

    edit_weights(damaged / "ema.safetensors", lambda s: s.update({"conv.bias": s["conv.bias"][:1]}))
    with pytest.raises(ckpt.CheckpointError, match=r"'conv.bias' in .*ema.safetensors has shape \[1\]"):
        load_policy(load_config(trained[0]), damaged, ema=True)


FILE_DAMAGE = {  # name -> (damage done to the folder, the file named, what the error says)
    "truncated weights": (lambda f: truncate(f / "model.safetensors"), "model.safetensors",
                          "truncated or corrupt"),
    "truncated training state": (lambda f: truncate(f / "training_state.pt"), "training_state.pt",
                                 "truncated or corrupt"),
    "meta not JSON": (lambda f: (f / "meta.json").write_text("{iteration: 1"), "meta.json", "not valid JSON"),
    "meta without iteration": (lambda f: (f / "meta.json").write_text('{"seed": 0}'), "meta.json",
                               "no valid 'iteration'"),
    "meta not an object": (lambda f: (f / "meta.json").write_text("[1]"), "meta.json", "no valid 'iteration'"),
    "no optimizer state": (lambda f: torch.save({"lr_scheduler": {}, "torch_rng": torch.get_rng_state()},
                                                f / "training_state.pt"),
                           "training_state.pt", r"lacks the \['optimizer'\] state"),
}


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
def test_damaged_checkpoint_files_are_named(damaged, damage):
    do, name, message = FILE_DAMAGE[damage]
    do(damaged)
    with pytest.raises(ckpt.CheckpointError, match=message) as info:
        ckpt.load_checkpoint(damaged)
    assert str(damaged / name) in str(info.value) and "older checkpoints/iter_<n>" in str(info.value)


def test_optimizer_state_of_another_shape_is_refused(trained, damaged, tmp_path):
    from tools.train import main as train_main

    state = torch.load(damaged / "training_state.pt", weights_only=True)
    first = state["optimizer"]["state"][0]
    first["exp_avg"] = first["exp_avg"].flatten()[:1]  # would broadcast inside AdamW
    torch.save(state, damaged / "training_state.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer state 'exp_avg' of parameter 0 in .*training_state.pt"):
        train_main([str(trained[0]), "--resume", str(damaged), "--work-dir", str(tmp_path / "resumed"),
                    "--cfg-options", "max_iters=2"])


def test_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    final = tmp_path / "checkpoints" / "iter_1"
    write_lora = lambda folder: (folder / "lora").mkdir() or (folder / "lora" / "w.bin").write_bytes(b"x")  # noqa: E731
    ckpt.save_checkpoint(final, {"w": torch.ones(2)}, {"x": 1}, {"iteration": 1}, write_extra=write_lora)
    rename = events.index(("replace", str(final)))
    synced_before = {path.split(".tmp-")[1].partition("/")[2] for kind, path in events[:rename] if kind == "fsync"}
    assert synced_before >= {"model.safetensors", "training_state.pt", "meta.json", "lora/w.bin", "lora", ""}
    assert ("fsync", str(final.parent)) in events[rename:]  # the rename itself is flushed


def test_partial_saves_are_cleaned_and_a_complete_old_copy_restored(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("iter_4", "iter_4.tmp-11", "iter_4.old-12", "iter_6.tmp-13", "iter_2.old-14", "notes"):
        (root / name).mkdir(parents=True)
    (root / "iter_2.old-14" / "meta.json").write_text('{"iteration": 2}')
    removed = ckpt.clean_partial_checkpoints(root)
    assert sorted(removed) == ["iter_4.old-12", "iter_4.tmp-11", "iter_6.tmp-13"]
    # killed between the two renames of a re-save: the old copy is the complete iter_2
    assert sorted(p.name for p in root.iterdir()) == ["iter_2", "iter_4", "notes"]
    assert (root / "iter_2" / "meta.json").is_file()
