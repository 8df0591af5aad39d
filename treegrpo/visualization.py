"""Pictures of branched denoising: one tree, its node previews, leaf images, rewards, advantages.

Plain functions returning PIL images, shared by ``tools/visualize_tree.py`` and the ComfyUI pack;
:func:`branched_sample` is the whole pipeline both run (sample, score, back up, draw).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from PIL import Image, ImageDraw, ImageFont

from .advantages import Advantages, TreeBackup
from .registry import ADVANTAGES, build
from .rewards.base import check_rewards
from .rollout import Rollout, index_cond
from .samplers import TreeSampler
from .schedules import BranchPlan


def _to_pil(image: torch.Tensor, size: int) -> Image.Image:
    """[3, H, W] in [0, 1] -> RGB PIL image of ``size`` x ``size`` (nearest, keeps pixels crisp)."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB").resize((size, size), Image.NEAREST)


def tree_layout(parent: list[int]) -> tuple[list[float], list[int]]:
    """x position (leaf order, leaves at 0, 1, 2, ...) and depth of every node of one tree.

    Parents come before children; a parent sits at the mean x of its children.
    """
    n = len(parent)
    children: list[list[int]] = [[] for _ in range(n)]
    depth = [0] * n
    for node, par in enumerate(parent):
        if par >= 0:
            children[par].append(node)
            depth[node] = depth[par] + 1
    x = [0.0] * n
    next_leaf = 0

    def place(node: int) -> float:
        nonlocal next_leaf
        if not children[node]:
            x[node] = float(next_leaf)
            next_leaf += 1
        else:
            x[node] = sum(place(c) for c in children[node]) / len(children[node])
        return x[node]

    for root in (i for i, p in enumerate(parent) if p < 0):
        place(root)
    return x, depth


def draw_tree(
    parent: list[int],
    node_previews: torch.Tensor,
    leaf_nodes: list[int],
    leaf_images: torch.Tensor,
    leaf_rewards: list[float],
    node_advantages: list[float],
    thumb: int = 64,
    title: str = "",
) -> Image.Image:
    """Draw one tree top-down.

    Args:
        parent: [N] parent of each node (-1 for the root), parents first.
        node_previews: [N, 3, H, W] in [0, 1], the predicted clean image at each node.
        leaf_nodes: [L] node index of each leaf; leaf_images [L, 3, H, W] the finished samples.
        leaf_rewards: [L] reward of each leaf; node_advantages: [N] advantage of the edge into
            each node (written on the edge; leaves also show it under their image).
    Returns an RGB image: node previews on depth rows, edges parent -> child labelled with the
    child's advantage, and below every leaf its finished image with ``r=`` and ``A=``.
    """
    x, depth = tree_layout(parent)
    font = ImageFont.load_default()
    gap, label_h, top = thumb // 2, 28, 24 if title else 8
    col_w = thumb + gap
    max_depth = max(depth)
    width = int(max(x) + 1) * col_w + gap
    row_h = thumb + 2 * label_h
    height = top + (max_depth + 2) * row_h + label_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill="black", font=font)

    def box(node: int) -> tuple[int, int]:  # top-left corner of a node's preview
        return int(gap + x[node] * col_w), int(top + depth[node] * row_h)

    for node, par in enumerate(parent):
        if par < 0:
            continue
        (px, py), (cx, cy) = box(par), box(node)
        start, end = (px + thumb // 2, py + thumb), (cx + thumb // 2, cy)
        adv = node_advantages[node]
        draw.line([start, end], fill=(0, 140, 0) if adv >= 0 else (200, 0, 0), width=2)
        mid = ((start[0] + end[0]) // 2 + 3, (start[1] + end[1]) // 2 - 6)
        draw.text(mid, f"{adv:+.2f}", fill="black", font=font)
    for node in range(len(parent)):
        canvas.paste(_to_pil(node_previews[node], thumb), box(node))
    for i, node in enumerate(leaf_nodes):
        bx, by = box(node)
        final_y = by + row_h
        draw.line([(bx + thumb // 2, by + thumb), (bx + thumb // 2, final_y)], fill="gray", width=1)
        canvas.paste(_to_pil(leaf_images[i], thumb), (bx, final_y))
        draw.text((bx, final_y + thumb + 2), f"r={leaf_rewards[i]:.3f}", fill="black", font=font)
        draw.text((bx, final_y + thumb + 14), f"A={node_advantages[node]:+.2f}", fill="black", font=font)
    return canvas


def subtree(rollout: Rollout, prompt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes of one prompt's tree. Returns (node ids [n], parent re-indexed [n], leaf rows [l])
    where leaf rows index ``rollout.leaf_nodes`` / ``rollout.images``."""
    nodes = torch.nonzero(rollout.prompt_index == prompt).flatten()
    remap = {int(n): i for i, n in enumerate(nodes.tolist())}
    parent = torch.tensor([remap.get(int(p), -1) for p in rollout.parent[nodes].tolist()])
    leaf_rows = torch.nonzero(torch.isin(rollout.leaf_nodes, nodes)).flatten()
    return nodes, parent, leaf_rows


@torch.no_grad()
def node_previews(policy, kernel, rollout: Rollout) -> torch.Tensor:
    """Predicted clean image of every node, decoded: [N, 3, H, W] in [0, 1] (one batched forward;
    nodes already at the last step are decoded as they are). Does not count towards NFE."""
    nfe_before = policy.nfe
    last = rollout.levels.numel() - 1
    step = rollout.step.clamp(max=last - 1)
    cond = index_cond(rollout.cond, rollout.prompt_index)
    out = policy.predict(rollout.latents, rollout.levels[step], cond, rollout.guidance_scale)
    x0 = kernel.predict_x0(rollout.latents, out, rollout.levels, step)
    done = (rollout.step >= last).view(-1, *([1] * (x0.dim() - 1)))
    x0 = torch.where(done, rollout.latents.float(), x0)
    policy.nfe = nfe_before
    return policy.decode(x0).float()


def tree_advantage(advantage_cfg: dict | None) -> TreeBackup:
    """The config's advantage when it is a tree backup, else a mean ``TreeBackup`` (flat configs
    and configs without one back up uniformly)."""
    advantage = build(ADVANTAGES, advantage_cfg) if advantage_cfg is not None else None
    return advantage if isinstance(advantage, TreeBackup) else TreeBackup(weighting="mean")


@contextlib.contextmanager
def count_forward_rows(policy, on_rows: Callable[[int], None] | None) -> Iterator[None]:
    """Within the block, call ``on_rows(model rows so far)`` after every forward of
    ``policy.denoiser`` (a torch forward hook, removed on exit; rows as counted by ``policy.nfe``,
    CFG rows included)."""
    if on_rows is None:
        yield
        return
    start = policy.nfe
    handle = policy.denoiser.register_forward_hook(lambda *_: on_rows(policy.nfe - start))
    try:
        yield
    finally:
        handle.remove()


def draw_tree_frames(parent: list[int], node_previews: torch.Tensor, leaf_nodes: list[int],
                     leaf_images: torch.Tensor, leaf_rewards: list[float], node_advantages: list[float],
                     thumb: int = 64, title: str = "") -> list[Image.Image]:
    """A video tree, one picture per frame: :func:`draw_tree` of frame ``t`` of every node preview
    [N, F, 3, H, W] and leaf clip [L, F, 3, H, W] (the same layout and labels on every frame)."""
    if node_previews.dim() != 5 or leaf_images.dim() != 5 or node_previews.shape[1] != leaf_images.shape[1]:
        raise ValueError(f"video trees need node previews [N, F, 3, H, W] and leaf clips [L, F, 3, H, W] with "
                         f"the same F, got {list(node_previews.shape)} and {list(leaf_images.shape)}")
    return [draw_tree(parent, node_previews[:, t], leaf_nodes, leaf_images[:, t], leaf_rewards, node_advantages,
                      thumb=thumb, title=title) for t in range(leaf_images.shape[1])]


@dataclass
class BranchedSample:
    """One prompt's sampled tree: ``rollout`` (N nodes, L leaves), ``rewards`` [L],
    ``advantages`` (``node`` [N], ``leaf`` [L]), ``previews`` [N, 3, H, W] ([N, F, 3, H, W] for
    video) and the drawn ``picture``; for video ``frames`` holds one picture per frame and
    ``picture`` is the first of them."""

    rollout: Rollout
    rewards: torch.Tensor
    advantages: Advantages
    previews: torch.Tensor
    picture: Image.Image
    frames: list[Image.Image] = field(default_factory=list)


@torch.no_grad()
def branched_sample(policy, kernel, reward: Any, reward_name: str, advantage: TreeBackup, prompt: str,
                    plan: BranchPlan, num_steps: int, guidance_scale: float, generator: torch.Generator,
                    chunk_size: int | None = None, thumb: int = 64, eta: float | None = None,
                    on_rows: Callable[[int], None] | None = None) -> BranchedSample:
    """Sample one TreeGRPO tree for ``prompt`` under ``plan``, score its leaves with ``reward``
    (checked as ``reward_name``), back the advantages up with ``advantage`` and draw the tree,
    titled with the window, k, ``eta`` (when given) and the mean reward.

    ``on_rows(rows so far)`` is called after every model forward of the sampling and the node
    previews (progress bars; it may raise to cancel)."""
    sampler = TreeSampler(num_steps=num_steps, guidance_scale=guidance_scale, chunk_size=chunk_size)
    with count_forward_rows(policy, on_rows):
        rollout = sampler.sample(policy, kernel, [prompt], plan, generator)
        previews = node_previews(policy, kernel, rollout)
    rewards = check_rewards(reward(rollout.images, rollout.leaf_prompts), rollout.leaf_nodes.numel(), reward_name)
    advantages = advantage(rollout, rewards)
    eta_text = "" if eta is None else f", eta={eta:g}"
    draw = draw_tree_frames if rollout.images.dim() == 5 else draw_tree
    drawn = draw(
        rollout.parent.tolist(), previews, rollout.leaf_nodes.tolist(), rollout.images, rewards.tolist(),
        advantages.node.tolist(), thumb=thumb,
        title=f"{prompt}  |  steps {plan.start}..{plan.stop - 1} of {num_steps}, k={plan.k}{eta_text}, "
              f"mean reward {rewards.mean():.3f}",
    )
    if isinstance(drawn, list):
        return BranchedSample(rollout, rewards, advantages, previews, drawn[0], drawn)
    return BranchedSample(rollout, rewards, advantages, previews, drawn)
