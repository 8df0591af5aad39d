"""Flat GRPO (the baseline) on the tiny SD3 and SD1.5 pipelines: LoRA trains, base weights stay.
(TreeGRPO runs of these policies are in test_sd3_policy.py / test_sd15_policy.py; FLUX in
test_flux_policy.py.)"""
import json

import pytest
import torch

from conftest import write_run_config
from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.policies import SD3Policy, StableDiffusionPolicy

CASES = {
    "sd3": (SD3Policy, "dict(type='FlowMatchingKernel', eta=0.7)"),
    "sd15": (StableDiffusionPolicy, "dict(type='DDIMKernel', eta=1.0)"),
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3", "sd15"])


@pytest.mark.parametrize("family", sorted(CASES))
def test_flat_grpo_trains_lora_only(family, tiny_models, tmp_path):
    policy_cls, kernel = CASES[family]
    policy = f"dict(type='{policy_cls.__name__}', model_path='{tiny_models[family]}', resolution=32, lora=dict(r=4))"
    config = write_run_config(
        tmp_path / f"grpo_{family}.py", policy, kernel, max_iters=2,
        schedule=dict(type="FixedWindow", start=1, depth=1, k=2),
        sampler=dict(type="FlatSampler", num_steps=3, group_size=3, guidance_scale=2.0),
        advantage=dict(type="GroupNorm"), loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05),
        hooks=[dict(type="LoggerHook")])
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["losses/loss"])) for r in records)
    assert records[0]["rollout/leaves"] == 2 * 3 and records[0]["losses/kl"] == 0.0

    trained = dict(runner.policy.denoiser.named_parameters())
    fresh = dict(policy_cls(str(tiny_models[family]), resolution=32, lora=dict(r=4)).denoiser.named_parameters())
    assert set(trained) == set(fresh)
    lora_b = [n for n in trained if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(fresh[n]) == 0 for n in lora_b)  # B starts at zero ...
    assert any(torch.count_nonzero(trained[n]) > 0 for n in lora_b)          # ... and was trained
    for name, value in trained.items():
        if "lora_" not in name:
            assert not value.requires_grad and torch.equal(value, fresh[name]), name
