"""Example of a custom reward written outside the treegrpo package.

How to write your own reward:

1. Make a module importable from where you launch training (e.g. ``plugins/my_reward.py``
   in the repo root, or any installed package).
2. Subclass :class:`treegrpo.rewards.base.Reward` and register it::

       from treegrpo.registry import REWARDS
       from treegrpo.rewards.base import Reward

       @REWARDS.register_module()
       class MyReward(Reward):
           def __init__(self, scale: float = 1.0) -> None:
               self.scale = scale

           def __call__(self, images, prompts):  # images [L, 3, H, W] in [0, 1]
               return self.scale * images.std(dim=(1, 2, 3))  # [L] float

   ``__call__`` must return one finite float per image; the runner checks the output with
   ``check_rewards`` and stops the run on NaN/inf or a wrong shape.
3. List the module in the config and name the class in the reward dict::

       custom_imports = dict(imports=['plugins.my_reward'], allow_failed_imports=False)
       reward = dict(type='MyReward', scale=2.0)

This file registers ``BrightnessReward``; try it with
``custom_imports = dict(imports=['plugins.example_reward'], allow_failed_imports=False)`` and
``reward = dict(type='BrightnessReward', target=0.5)``.
"""
from __future__ import annotations

import torch

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, check_images


@REWARDS.register_module()
class BrightnessReward(Reward):
    """Reward = -|mean brightness - target| per image, brightness = mean over RGB and pixels.

    images [L, 3, H, W] float in [0, 1] -> [L] float32 in [-1, 0] (0 at the target).
    """

    def __init__(self, target: float = 0.5) -> None:
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise ValueError(f"target must be a number in [0, 1], got {target!r}")
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target must be in [0, 1], got {target!r}")
        self.target = float(target)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        brightness = images.float().mean(dim=(1, 2, 3))
        return -(brightness - self.target).abs()

    def __repr__(self) -> str:
        return f"BrightnessReward(target={self.target})"
