"""tools/visualize_tree.py on a video policy (TinyVideoPolicy, leaves [L, F, 3, H, W]): an animated
GIF with one tree picture per frame."""
import numpy as np
import pytest
import torch
from PIL import Image
from test_video_core import FRAMES, TinyVideoPolicy, VideoBrightnessReward  # noqa: F401  (registers both)

from conftest import write_config
from tools.visualize_tree import main as visualize_main
from treegrpo.visualization import draw_tree, draw_tree_frames


def test_draw_tree_frames_draws_each_frame(tmp_path):
    parent, leaf_nodes = [-1, 0, 0], [1, 2]
    previews = torch.zeros(3, 2, 3, 4, 4)
    leaves = torch.zeros(2, 2, 3, 4, 4)
    leaves[:, 1] = 1.0  # frame 1 of the leaves is white, frame 0 black
    frames = draw_tree_frames(parent, previews, leaf_nodes, leaves, [0.1, 0.2], [0.0, 1.0, -1.0], thumb=8)
    assert len(frames) == 2 and frames[0].size == frames[1].size
    first = draw_tree(parent, previews[:, 0], leaf_nodes, leaves[:, 0], [0.1, 0.2], [0.0, 1.0, -1.0], thumb=8)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(first))
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))
    with pytest.raises(ValueError, match=r"node previews \[N, F, 3, H, W\] and leaf clips"):
        draw_tree_frames(parent, previews[:, 0], leaf_nodes, leaves, [0.1, 0.2], [0.0, 1.0, -1.0])


def test_visualize_tree_writes_an_animated_gif_for_video(tmp_path):
    config = write_config(tmp_path, reward="VideoBrightnessReward",
                          extra="\npolicy = dict(type='TinyVideoPolicy')\n")
    out = visualize_main([config, "--prompt", "a red circle", "--out", str(tmp_path / "tree.png"),
                          "--start", "1", "--depth", "2", "--k", "2", "--thumb", "16", "--fps", "4"])
    assert out == tmp_path / "tree.gif" and not (tmp_path / "tree.png").exists()
    gif = Image.open(out)
    assert gif.is_animated and gif.n_frames == FRAMES and gif.info["duration"] == 250
    # 4 leaves side by side at 16 + 8 pixels per column, + 8 margin, + 2 px grid padding each side
    assert gif.size[0] == 4 * 24 + 8 + 4
    pictures = []
    for t in range(FRAMES):
        gif.seek(t)
        pictures.append(np.asarray(gif.convert("RGB")))
    assert any(not np.array_equal(pictures[0], p) for p in pictures[1:])  # the clips move
    with pytest.raises(ValueError, match="--fps must be an int >= 1"):
        visualize_main([config, "--prompt", "x", "--out", str(tmp_path / "t.gif"), "--fps", "0"])
