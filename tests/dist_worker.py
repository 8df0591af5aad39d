"""Worker for tests/test_distributed.py, started by torchrun with 2 processes.

Trains the tiny test policy for one iteration and writes what this rank saw and its parameters.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tests.conftest  # noqa: E402,F401  (registers TinyTestPolicy, MeanBrightnessReward)
from treegrpo.runner import Runner  # noqa: E402


def main(out_dir: str) -> None:
    cfg = Config(dict(
        seed=5,
        policy=dict(type="TinyTestPolicy"),
        kernel=dict(type="FlowMatchingKernel", eta=0.8),
        schedule=dict(type="FixedWindow", start=1, depth=2, k=2),
        sampler=dict(type="TreeSampler", num_steps=4),
        advantage=dict(type="TreeBackup"),
        reward=dict(type="MeanBrightnessReward"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2),
        train_dataset=dict(type="PromptList", prompts=[f"prompt {i}" for i in range(16)]),
        optimizer=dict(type="SGD", lr=0.5),
        max_iters=1,
        prompts_per_iter=4,
        hooks=[],
    ))
    runner = Runner(cfg, Path(out_dir) / "run")
    seen = runner.prompts_for(0)
    rollout = runner.sampler.sample(runner.policy, runner.kernel, seen,
                                    runner.schedule.plan(0, 4, None), runner.generator("sample", 0))
    local_rewards = runner.score(rollout.images, rollout.leaf_prompts)
    gathered = runner.accelerator.gather(local_rewards)
    runner.train()
    rank = runner.rank
    save_file(runner.policy.trainable_state_dict(), str(Path(out_dir) / f"params_rank{rank}.safetensors"))
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({
        "world_size": runner.world_size,
        "prompts": seen,
        "gathered_rewards": gathered.tolist(),
        "local_rewards": local_rewards.tolist(),
        "distributed_type": str(runner.accelerator.distributed_type),
    }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
