import numpy as np
import torch
from PIL import Image

from tools.visualize_tree import main as visualize_main
from treegrpo.visualization import draw_tree, tree_layout


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
