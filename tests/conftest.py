"""Shared test fixtures: a tiny random-weight flow policy and a simple reward, registered so that
configs in tests can name them (``TinyTestPolicy``, ``MeanBrightnessReward``), and
:func:`write_run_config` for the tiny training runs of the policy and export tests."""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from treegrpo.policies.base import Policy  # noqa: E402
from treegrpo.registry import POLICIES, REWARDS  # noqa: E402


class TinyDenoiser(nn.Module):
    """conv(x) scaled by the level plus a per-prompt bias: enough structure to train on."""

    def __init__(self, channels: int = 2, emb_dim: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.text = nn.Linear(emb_dim, channels)

    def forward(self, x, level, emb):
        return self.conv(x) * (1 + level[:, None, None, None]) + self.text(emb)[:, :, None, None]


@POLICIES.register_module(force=True)
class TinyTestPolicy(Policy):
    """A random-weight flow policy on 2x4x4 latents; prompts embed by a hash of their text."""

    def __init__(self, seed: int = 0, keep_reference: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.denoiser = TinyDenoiser()
        self.latent_shape = (2, 4, 4)
        self.reference_denoiser = None
        if keep_reference:
            import copy

            self.reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)

    def encode_prompts(self, prompts):
        gen = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        emb = torch.stack([torch.randn(4, generator=g) for g in gen]) if prompts else torch.zeros(0, 4)
        return {"emb": emb.to(self.device_)}

    def null_condition(self, batch_size):
        return {"emb": torch.zeros(batch_size, 4, device=self.device_)}

    @property
    def device_(self):
        return next(self.denoiser.parameters()).device

    def noise_levels(self, num_steps):
        return torch.linspace(1.0, 0.0, num_steps + 1)

    def model_output(self, latents, level, cond, model=None):
        return (self.denoiser if model is None else model)(latents, level, cond["emb"])

    def decode(self, latents):
        gray = torch.sigmoid(latents[:, :1])
        return gray.expand(-1, 3, -1, -1).contiguous()


@REWARDS.register_module(force=True)
class MeanBrightnessReward:
    """Mean pixel value of each image: [L]."""

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@pytest.fixture
def tiny_policy():
    return TinyTestPolicy(seed=0)


RUN_CONFIG_DEFAULTS = {  # one short tree run: a depth-1 binary tree over 2 steps, one checkpointed iteration
    "schedule": dict(type="FixedWindow", start=0, depth=1, k=2),
    "sampler": dict(type="TreeSampler", num_steps=2),
    "advantage": dict(type="TreeBackup"),
    "reward": dict(type="Colorfulness"),
    "loss": dict(type="GRPOClipLoss", clip_range=0.2),
    "train_dataset": dict(type="PromptList", prompts=["a red circle", "a blue square"]),
    "optimizer": dict(type="AdamW", lr=5e-2),
    "max_iters": 1,
    "prompts_per_iter": 2,
    "hooks": [dict(type="CheckpointHook", interval=1)],
}


def write_run_config(path, policy, kernel, **overrides) -> Path:
    """Write a training config for tools/train.py: ``policy`` and ``kernel`` plus the pieces of
    ``RUN_CONFIG_DEFAULTS``, each replaceable by keyword (``sampler=dict(...)``, ``max_iters=2``).
    A value is a Python object (written with repr) or a str of config source written as is."""
    unknown = sorted(set(overrides) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(RUN_CONFIG_DEFAULTS)}")
    pieces = {"policy": policy, "kernel": kernel, **RUN_CONFIG_DEFAULTS, **overrides}
    path = Path(path)
    path.write_text("".join(f"{key} = {value if isinstance(value, str) else repr(value)}\n"
                            for key, value in pieces.items()))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random-weight SD3, FLUX and SD1.5 pipelines written once per test session
    (``tools/make_tiny_models.py``): {family: folder}. Test files needing other sets define their own."""
    from tools.make_tiny_models import main as make_tiny

    written = make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3", "flux", "sd15"])
    return {name: str(path) for name, path in written.items()}


# ------------------------------------------------------------------ tiny training runs (TinyTestPolicy)
TINY_CONFIG = """
seed = 3
policy = dict(type='TinyTestPolicy')
kernel = dict(type='FlowMatchingKernel', eta=0.8)
schedule = dict(type='RandomWindow', depth=2, k=2)
sampler = dict(type='{sampler}', num_steps=5{sampler_args})
advantage = dict(type='{advantage}')
reward = dict(type='{reward}')
loss = dict(type='GRPOClipLoss', clip_range=0.2, beta={beta})
train_dataset = dict(type='PromptList', prompts=['a red circle', 'a blue square', 'a cat', 'a dog'])
optimizer = dict(type='AdamW', lr=1e-2)
update = dict(num_inner_epochs=2, num_minibatches=2, micro_batch_size=3)
max_iters = {iters}
prompts_per_iter = 2
hooks = [dict(type='LoggerHook', interval=1), dict(type='CheckpointHook', interval=2, max_keep=0)]
"""


def write_config(tmp_path: Path, name="tiny.py", sampler="TreeSampler", advantage="TreeBackup",
                 reward="MeanBrightnessReward", iters=2, beta=0.0, extra=""):
    sampler_args = ", group_size=4" if sampler == "FlatSampler" else ""
    text = TINY_CONFIG.format(sampler=sampler, sampler_args=sampler_args, advantage=advantage,
                              reward=reward, iters=iters, beta=beta)
    path = tmp_path / name
    path.write_text(text + extra)
    return str(path)


def read_log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
