import numpy as np
import torch
from PIL import Image

from tools.visualize_tree import main as visualize_main
from treegrpo.advantages import TreeBackup
from treegrpo.inference import load_config, load_policy
from treegrpo.registry import REWARDS, build
from treegrpo.schedules import BranchPlan
from treegrpo.utils import make_generator
from treegrpo.visualization import branched_sample, draw_tree, tree_advantage, tree_layout


def test_tree_layout_centres_parents_over_children():
    #        0
    #      1   2
    #     3 4  5 6
    x, depth = tree_layout([-1, 0, 0, 1, 1, 2, 2])
    assert depth == [0, 1, 1, 2, 2, 2, 2]
    assert x == [1.5, 0.5, 2.5, 0.0, 1.0, 2.0, 3.0]


def test_draw_tree_has_one_preview_per_node_and_every_leaf_image():
    parent = [-1, 0, 0, 1, 1, 2, 2]
    leaf_nodes = [3, 4, 5, 6]
    # every node and leaf image is one solid, distinct colour
    node_colours = [(i * 30 + 10, 200 - i * 20, 50 + i * 25) for i in range(7)]
    leaf_colours = [(255, 0, 255), (0, 255, 255), (128, 0, 0), (0, 0, 128)]
    solid = lambda c: torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 8, 8)  # noqa: E731
    previews = torch.stack([solid(c) for c in node_colours])
    leaves = torch.stack([solid(c) for c in leaf_colours])
    image = draw_tree(parent, previews, leaf_nodes, leaves, [0.1, 0.2, 0.3, 0.4],
                      [0.0, 1.0, -1.0, 0.5, 1.5, -0.5, -1.5], thumb=16, title="t")
    assert isinstance(image, Image.Image)
    pixels = np.asarray(image).reshape(-1, 3)
    counts = {tuple(c): 0 for c in node_colours + leaf_colours}
    for colour in counts:
        counts[colour] = int((pixels == np.array(colour)).all(axis=1).sum())
    assert all(count == 16 * 16 for count in counts.values()), counts  # one full thumbnail each


def test_visualize_tree_tool_writes_a_png(tmp_path):
    out = visualize_main(["configs/treegrpo_toy_shapes.py", "--prompt",
                          "a large green square on a white background on the left",
                          "--out", str(tmp_path / "tree.png"), "--start", "1", "--depth", "2", "--k", "3",
                          "--thumb", "32"])
    image = Image.open(out)
    # 1 + 3 + 9 nodes: 9 leaves side by side at 32 + 16 pixels per column
    assert image.size[0] == 9 * 48 + 16


def test_tree_advantage_keeps_a_tree_backup_and_backs_up_flat_configs_uniformly():
    assert tree_advantage(dict(type="TreeBackup", weighting="prob")).weighting == "prob"
    for flat in (dict(type="GroupNorm"), None):
        advantage = tree_advantage(flat)
        assert isinstance(advantage, TreeBackup) and advantage.weighting == "mean"


def test_branched_sample_reports_every_forward_and_normalises_leaf_rewards():
    cfg = load_config("configs/treegrpo_toy_shapes.py")
    policy, kernel = load_policy(cfg)
    rows = []
    tree = branched_sample(policy, kernel, build(REWARDS, cfg.reward), "toy", tree_advantage(None),
                           "a small red circle on a blue background at the top", BranchPlan(1, 2, 2), 4, 1.0,
                           make_generator("cpu", 0, 2), thumb=16, eta=0.7, on_rows=rows.append)
    # sampling: prefix 1 row, window 1 + 2 rows, suffix 4 leaves x 1 step; then 7 node previews at once
    assert rows == [1, 2, 4, 8, 15] and tree.rollout.nfe == 8
    assert "model_output" not in vars(policy)  # the counting wrapper is removed again
    rewards = tree.rewards
    assert rewards.shape == (4,) and tree.previews.shape == (7, 3, 32, 32)
    expected = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
    assert torch.allclose(tree.advantages.leaf, expected, atol=1e-5)
    assert tree.picture.size[0] == 4 * (16 + 8) + 8  # 4 leaves side by side
