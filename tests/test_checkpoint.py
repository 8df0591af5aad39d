import json

import pytest
import torch

from treegrpo import checkpoint as ckpt


def test_round_trip_and_resolve(tmp_path):
    run = tmp_path / "run"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    training = {"optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []}, "rng": torch.get_rng_state()}
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
