"""Tree reuse: several inner epochs over one tree with the PPO clip (update.num_inner_epochs)."""
import pytest
import torch

import treegrpo.runner as runner_module
from conftest import TinyTestPolicy, read_log, write_config
from tools.train import main as train_main

# TINY_CONFIG: 2 prompts, one k=2 depth-2 tree each: 3 parents and 6 edges per tree.
PARENTS, EDGES = 2 * 3, 2 * 6


def test_every_edge_is_trained_once_per_epoch(tmp_path, monkeypatch):
    """2 epochs x 2 minibatches of 3 parents (micro_batch_size=3): 4 forwards, each epoch's
    micro-batches cover every edge exactly once."""
    calls = []

    def spy(policy, kernel, rollout, parents, **kwargs):
        batch = edge_log_probs(policy, kernel, rollout, parents, **kwargs)
        calls.append((rollout, batch.child.tolist()))
        return batch

    edge_log_probs = runner_module.edge_log_probs
    monkeypatch.setattr(runner_module, "edge_log_probs", spy)
    config = write_config(tmp_path, iters=1)  # update = dict(num_inner_epochs=2, num_minibatches=2, ...)
    train_main([config, "--work-dir", str(tmp_path / "run")])
    assert len(calls) == 4
    rollout = calls[0][0]
    edges = torch.nonzero(rollout.parent >= 0).flatten().tolist()
    assert len(edges) == EDGES
    for epoch in (calls[:2], calls[2:]):
        trained = [child for _, children in epoch for child in children]
        assert sorted(trained) == edges  # each edge once, none twice
    record = read_log(tmp_path / "run")[0]
    assert record["update/nfe"] == 2 * PARENTS  # the update forwards of both epochs


def test_second_epoch_is_off_policy_and_clipped(tmp_path):
    """One minibatch per epoch: epoch 1 is the on-policy step (ratio 1, nothing clipped); with a
    large lr the weights move enough that epoch 2's ratios leave a tight clip range."""
    extra = ("update = dict(num_inner_epochs=2, num_minibatches=1, micro_batch_size=16)\n"
             "optimizer = dict(type='AdamW', lr=0.5)\n"
             "loss = dict(type='GRPOClipLoss', clip_range=1e-4)\n")
    runner = train_main([write_config(tmp_path, iters=1, extra=extra), "--work-dir", str(tmp_path / "run")])
    record = read_log(tmp_path / "run")[0]
    assert record["losses/onpolicy_ratio_max_dev"] < 1e-5
    assert record["update/clip_fraction_epoch1"] == 0.0
    assert record["update/clip_fraction_epoch2"] > 0.0
    # equal edge counts per epoch: the iteration's fraction is the mean of the two
    assert record["update/clip_fraction"] == pytest.approx(record["update/clip_fraction_epoch2"] / 2)
    assert record["update/nfe"] == 2 * PARENTS
    assert record["update/grad_norm"] > 0  # the mean of both steps' gradient norms
    initial = TinyTestPolicy().denoiser.state_dict()
    trained = runner.policy.denoiser.state_dict()
    assert any(not torch.equal(trained[key], initial[key]) for key in initial)


def test_one_epoch_logs_the_clip_fraction_without_per_epoch_keys(tmp_path):
    extra = "update = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=16)\n"
    train_main([write_config(tmp_path, iters=1, extra=extra), "--work-dir", str(tmp_path / "run")])
    record = read_log(tmp_path / "run")[0]
    assert record["update/clip_fraction"] == 0.0  # the only step is on-policy
    assert not [key for key in record if key.startswith("update/clip_fraction_epoch")]
    assert record["update/nfe"] == PARENTS


def test_later_epochs_reuse_the_reference_predictions(tmp_path, monkeypatch):
    """With the KL term, epoch 1 runs one policy and one reference forward per parent, later
    epochs only the policy forward: 3 epochs -> 3 x 6 + 6 forwards. The KL values of a later epoch
    equal those computed with a fresh reference forward (the cache changes no number)."""
    from treegrpo.update import ReferenceCache

    kls = []

    def spy(policy, kernel, rollout, parents, **kwargs):
        cache = kwargs.get("reference_cache")
        cached_before = cache is not None and cache.get(parents) is not None
        batch = edge_log_probs(policy, kernel, rollout, parents, **kwargs)
        if cached_before:
            fresh = edge_log_probs(policy, kernel, rollout, parents, with_kl=True, model=kwargs["model"])
            kls.append((batch.kl.detach(), fresh.kl.detach()))
            policy.nfe -= fresh.forwards  # the check's own forwards are not the update's
        return batch

    edge_log_probs = runner_module.edge_log_probs
    monkeypatch.setattr(runner_module, "edge_log_probs", spy)
    extra = ("update = dict(num_inner_epochs=3, num_minibatches=1, micro_batch_size=16)\n"
             "policy = dict(type='TinyTestPolicy', keep_reference=True)\n"
             "loss = dict(type='GRPOClipLoss', clip_range=1e-2, beta=0.5)\n")
    train_main([write_config(tmp_path, iters=1, extra=extra), "--work-dir", str(tmp_path / "run")])
    record = read_log(tmp_path / "run")[0]
    assert record["update/nfe"] == 3 * PARENTS + PARENTS
    assert len(kls) == 2  # epochs 2 and 3 (epoch 1 filled the cache)
    for cached, fresh in kls:
        assert torch.equal(cached, fresh) and cached.abs().sum() > 0

    cache = ReferenceCache(5)
    assert cache.get(torch.tensor([1])) is None
    cache.put(torch.tensor([3, 1]), torch.tensor([[30.0], [10.0]]))
    assert cache.get(torch.tensor([1, 3])).tolist() == [[10.0], [30.0]]
    assert cache.get(torch.tensor([1, 2])) is None  # 2 never stored
