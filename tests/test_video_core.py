"""The sampling / training core on video latents [N, C, F, H, W]: samplers, kernels, tree
advantages and the update are shape-agnostic (Wan and other video models rely on this)."""
from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from conftest import read_log, write_config
from tools.train import main as train_main
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.kernels.gaussian import gaussian_log_prob
from treegrpo.policies.base import Policy
from treegrpo.registry import POLICIES, REWARDS
from treegrpo.samplers import FlatSampler, TreeSampler
from treegrpo.schedules import BranchPlan
from treegrpo.update import edge_log_probs

FRAMES = 3
PROMPTS = ["a red circle", "a blue square"]


class TinyVideoDenoiser(nn.Module):
    """conv3d(x) scaled by the level plus a per-prompt bias, on [B, C, F, H, W]."""

    def __init__(self, channels: int = 2, emb_dim: int = 4):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.text = nn.Linear(emb_dim, channels)

    def forward(self, x, level, emb):
        return self.conv(x) * (1 + level[:, None, None, None, None]) + self.text(emb)[:, :, None, None, None]


@POLICIES.register_module(force=True)
class TinyVideoPolicy(Policy):
    """A random-weight flow policy on 2x3x4x4 video latents; decodes to [B, F, 3, 4, 4] frames."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.denoiser = TinyVideoDenoiser()
        self.latent_shape = (2, FRAMES, 4, 4)

    def encode_prompts(self, prompts):
        gen = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        emb = torch.stack([torch.randn(4, generator=g) for g in gen]) if prompts else torch.zeros(0, 4)
        return {"emb": emb}

    def null_condition(self, batch_size):
        return {"emb": torch.zeros(batch_size, 4)}

    def noise_levels(self, num_steps):
        return torch.linspace(1.0, 0.0, num_steps + 1)

    def model_output(self, latents, level, cond, model=None):
        return (self.denoiser if model is None else model)(latents, level, cond["emb"])

    def decode(self, latents):
        """[B, 2, F, 4, 4] -> frames [B, F, 3, 4, 4] in [0, 1]."""
        gray = torch.sigmoid(latents[:, :1]).permute(0, 2, 1, 3, 4)
        return gray.expand(-1, -1, 3, -1, -1).contiguous()


@REWARDS.register_module(force=True)
class VideoBrightnessReward:
    """Mean pixel value of each video [L, F, 3, H, W] -> [L]."""

    def __call__(self, images, prompts):
        assert images.dim() == 5 and images.shape[2] == 3
        return images.mean(dim=(1, 2, 3, 4))


def test_log_prob_on_5d_latents_equals_hand_computation():
    """Mean over all C*F*H*W elements of the Gaussian log-density, one value per row."""
    torch.manual_seed(0)
    x, mean = torch.randn(2, 2, 3, 2, 2), torch.randn(2, 2, 3, 2, 2)
    std = torch.tensor([0.5, 2.0])[:, None, None, None, None]
    got = gaussian_log_prob(x, mean, std)
    for row, s in enumerate((0.5, 2.0)):
        terms = [-(a - m) ** 2 / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi)
                 for a, m in zip(x[row].flatten().tolist(), mean[row].flatten().tolist())]
        assert got[row].item() == pytest.approx(sum(terms) / 24, abs=1e-5)
    # the kernel's log-prob of a 5-D SDE step is the same formula at its mean and std
    kernel = FlowMatchingKernel(eta=0.7)
    levels = torch.linspace(1, 0, 5)
    step = torch.tensor([1, 2])
    v = torch.randn_like(x)
    m, s = kernel.sde_mean_std(x, v, levels, step)
    assert m.shape == x.shape and s.shape == (2, 1, 1, 1, 1)
    x_next = m + s * torch.randn_like(m)
    assert torch.allclose(kernel.log_prob(x_next, x, v, levels, step), gaussian_log_prob(x_next, m, s))


@pytest.mark.parametrize("flat", [False, True])
def test_samplers_on_video_latents_and_on_policy_log_probs(flat):
    policy = TinyVideoPolicy()
    kernel = FlowMatchingKernel(eta=0.8)
    plan = BranchPlan(start=1, depth=2, k=2)
    sampler = FlatSampler(num_steps=4, group_size=3) if flat else TreeSampler(num_steps=4)
    rollout = sampler.sample(policy, kernel, PROMPTS, plan, torch.Generator().manual_seed(0))
    leaves = 2 * (3 if flat else 4)
    nodes = 2 * (3 * 3 if flat else 7)  # flat: a root and 2 SDE steps per chain; tree: 1 + 2 + 4
    assert rollout.latents.shape == (nodes, 2, FRAMES, 4, 4)
    assert rollout.images.shape == (leaves, FRAMES, 3, 4, 4)
    # recomputing each edge's log-prob with the same weights gives the sampled one back
    parents = rollout.parent_nodes
    with torch.no_grad():
        batch = edge_log_probs(policy, kernel, rollout, parents)
    assert torch.allclose(batch.log_prob, rollout.log_prob[batch.child], atol=1e-5)
    assert batch.child.numel() == rollout.edge_nodes.numel()


@pytest.mark.parametrize("sampler,advantage", [("TreeSampler", "TreeBackup"), ("FlatSampler", "GroupNorm")])
def test_one_training_iteration_on_video_latents(tmp_path, sampler, advantage):
    extra = "policy = dict(type='TinyVideoPolicy')\n"
    config = write_config(tmp_path, sampler=sampler, advantage=advantage,
                          reward="VideoBrightnessReward", iters=1, extra=extra)
    before = {k: v.clone() for k, v in TinyVideoPolicy().denoiser.state_dict().items()}
    runner = train_main([config, "--work-dir", str(tmp_path / "run")])
    record = read_log(tmp_path / "run")[-1]
    assert record["losses/onpolicy_ratio_max_dev"] < 1e-5
    assert math.isfinite(record["losses/policy_loss"])
    after = runner.policy.denoiser.state_dict()
    assert any(not torch.equal(after[k].cpu(), before[k]) for k in before)


def test_save_grid_writes_png_for_images_and_gif_for_clips(tmp_path):
    from PIL import Image

    from treegrpo.utils import save_grid

    assert save_grid(torch.zeros(2, 3, 4, 4), tmp_path / "grid.png") == tmp_path / "grid.png"
    clips = torch.zeros(2, FRAMES, 3, 4, 4)
    clips[:, 1] = 1.0  # the middle frame white, the others black
    path = save_grid(clips, tmp_path / "video.png", nrow=2, fps=4)
    assert path == tmp_path / "video.gif" and not (tmp_path / "video.png").exists()
    with Image.open(path) as gif:
        assert gif.n_frames == FRAMES and gif.info["duration"] == 250 and gif.size == (14, 8)  # 2 x 4px + padding
        centres = []
        for t in range(FRAMES):
            gif.seek(t)
            centres.append(gif.convert("L").getpixel((3, 3)))  # inside the first clip
    assert centres == [0, 255, 0]
    with pytest.raises(ValueError, match="fps must be an int >= 1"):
        save_grid(clips, tmp_path / "bad.png", fps=0)


def test_eval_hook_writes_an_animated_preview_of_video_samples(tmp_path):
    extra = ("policy = dict(type='TinyVideoPolicy')\n"
             "hooks = [dict(type='LoggerHook', interval=1), dict(type='EvalHook', interval=1, num_prompts=2,"
             " grid_size=2,"
             " dataset=dict(type='PromptList', prompts=['a cat', 'a dog']))]\n")
    config = write_config(tmp_path, reward="VideoBrightnessReward", iters=1, extra=extra)
    train_main([config, "--work-dir", str(tmp_path / "run")])
    from PIL import Image

    previews = sorted((tmp_path / "run" / "eval").iterdir())  # before the run and after iteration 1
    assert [p.suffix for p in previews] == [".gif", ".gif"]
    with Image.open(previews[0]) as gif:
        assert gif.n_frames == FRAMES
    assert sum("eval/reward_mean" in r for r in read_log(tmp_path / "run")) == 2
