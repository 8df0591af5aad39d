"""Pruning the policy update to the parents with the most informative edges (update.prune)."""
import pytest
import torch

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.update import prune_settings, select_parents, update_settings

# Two k=2 depth-2 trees. Tree 0: root 0 -> 1, 2; 1 -> 3, 4; 2 -> 5, 6. Tree 1: 7 -> 8, 9; 8 -> 10, 11;
# 9 -> 12, 13.
PARENT = torch.tensor([-1, 0, 0, 1, 1, 2, 2, -1, 7, 7, 8, 8, 9, 9])
PROMPT = torch.tensor([0] * 7 + [1] * 7)
ADV = torch.tensor([0.0, 0.5, -0.5, 0.1, -0.3, 0.9, 0.0,
                    0.0, 0.01, -0.01, 0.02, -0.02, 0.0, 0.0])
PARENTS = torch.tensor([0, 1, 2, 7, 8, 9])


def test_keeps_the_top_half_of_each_tree_by_max_abs_advantage():
    # max |A|: tree 0: p0 0.5, p1 0.3, p2 0.9; tree 1: p7 0.01, p8 0.02, p9 0.0; ceil(0.5 * 3) = 2
    kept = select_parents(PARENTS, PARENT, PROMPT, ADV, keep_fraction=0.5)
    assert kept.tolist() == [0, 2, 7, 8]  # tree 1 keeps 2 too: per tree, not a global threshold


def test_max_and_mean_scores_pick_different_parents():
    # keep ceil(3 / 3) = 1 per tree. Tree 0: max p2 (0.9) > p0 (0.5); mean p0 (0.5) > p2 (0.45)
    assert select_parents(PARENTS, PARENT, PROMPT, ADV, 1 / 3, "max").tolist() == [2, 8]
    assert select_parents(PARENTS, PARENT, PROMPT, ADV, 1 / 3, "mean").tolist() == [0, 8]


def test_ties_go_to_the_lower_node_id_and_full_fraction_keeps_all():
    flat = torch.full_like(ADV, 0.4)
    assert select_parents(PARENTS, PARENT, PROMPT, flat, 0.5).tolist() == [0, 1, 7, 8]
    assert torch.equal(select_parents(PARENTS, PARENT, PROMPT, ADV, 1.0), PARENTS)


def test_settings_default_off_and_validated():
    assert update_settings(None)["prune"] is None
    assert update_settings(dict(prune=dict(keep_fraction=1.0)))["prune"] is None
    assert update_settings(dict(prune=dict(keep_fraction=0.5)))["prune"] == dict(keep_fraction=0.5, score="max")
    for bad, key in [(dict(keep_fraction=0.0), "keep_fraction"), (dict(keep_fraction=1.5), "keep_fraction"),
                     (dict(keep_fraction=0.5, score="min"), "score"), (dict(fraction=0.5), "fraction"),
                     (0.5, "prune")]:
        with pytest.raises(ValueError, match=key):
            prune_settings(bad)
    with pytest.raises(ValueError, match="per_step_batches"):
        update_settings(dict(prune=dict(keep_fraction=0.5), per_step_batches=True))


UPDATE = "update = dict(num_inner_epochs=2, num_minibatches=2, micro_batch_size=3{})\n"


def train(tmp_path, name, prune=""):
    config = write_config(tmp_path, name=f"{name}.py", iters=1, extra=UPDATE.format(prune))
    runner = train_main([config, "--work-dir", str(tmp_path / name)])
    record = read_log(tmp_path / name)[0]
    return record, {k: v.clone() for k, v in runner.policy.denoiser.state_dict().items()}


def test_prune_none_or_full_fraction_is_the_unpruned_update(tmp_path):
    base, base_weights = train(tmp_path, "base")
    compared = [key for key in base if key.split("/")[0] in ("losses", "update", "reward", "rollout", "nfe")]
    assert "losses/policy_loss" in compared and "update/grad_norm" in compared
    for name, prune in [("none", ", prune=None"), ("full", ", prune=dict(keep_fraction=1.0)")]:
        record, weights = train(tmp_path, name, prune)
        assert "update/pruned_parents" not in record
        assert {key: record[key] for key in compared} == {key: base[key] for key in compared}
        assert all(torch.equal(weights[key], base_weights[key]) for key in base_weights)  # bit for bit


def test_pruning_cuts_the_update_forwards(tmp_path):
    # 2 trees (k=2, depth 2: 3 parents each), 2 inner epochs: 12 forwards unpruned; keep 2 per tree
    base, _ = train(tmp_path, "base")
    pruned, _ = train(tmp_path, "half", ", prune=dict(keep_fraction=0.5)")
    assert base["update/nfe"] == 2 * 2 * 3
    assert pruned["update/nfe"] == 2 * 2 * 2
    assert pruned["update/pruned_parents"] == 2
    assert pruned["rollout/nfe"] == base["rollout/nfe"] and pruned["reward/mean"] == base["reward/mean"]
    assert pruned["losses/policy_loss"] != base["losses/policy_loss"]


def test_pruning_flat_chains_per_prompt(tmp_path):
    # flat: 4 chains x 2 SDE steps = 8 parents per prompt, 2 prompts, 2 epochs: 32 -> 16 forwards
    extra = UPDATE.format(", prune=dict(keep_fraction=0.5, score='mean')")
    config = write_config(tmp_path, sampler="FlatSampler", advantage="GroupNorm", iters=1, extra=extra)
    train_main([config, "--work-dir", str(tmp_path / "flat")])
    record = read_log(tmp_path / "flat")[0]
    assert record["update/nfe"] == 2 * 2 * 4 and record["update/pruned_parents"] == 2 * 4
