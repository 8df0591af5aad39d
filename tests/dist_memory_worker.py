"""Worker for tests/test_memory_bounds.py: sharded EvalHook and global reward statistics.

``dist_memory_worker.py OUT``: under torchrun (2 processes) or in-process (1 process, the
reference). Writes ``<OUT>/w<world>_rank<r>.json`` with the eval metrics, the per-prompt tracker
state after two iterations and global_std advantages of fixed rewards.
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import tests.conftest  # noqa: E402,F401  (registers TinyTestPolicy, MeanBrightnessReward)
from tests.worker_exit import close_and_exit  # noqa: E402
from treegrpo.advantages import GroupNorm  # noqa: E402
from treegrpo.advantages.distributed import RankGroup  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402

PROMPTS = [f"prompt {i}" for i in range(6)]


def config() -> Config:
    return Config(dict(
        seed=5, policy=dict(type="TinyTestPolicy"), kernel=dict(type="FlowMatchingKernel", eta=0.8),
        schedule=dict(type="FixedWindow", start=1, depth=2, k=2), sampler=dict(type="TreeSampler", num_steps=4),
        advantage=dict(type="TreeBackup", stat_tracking=dict(buffer_size=16, min_count=2)),
        reward=dict(type="MeanBrightnessReward"), loss=dict(type="GRPOClipLoss", clip_range=0.2),
        train_dataset=dict(type="PromptList", prompts=PROMPTS), optimizer=dict(type="SGD", lr=0.0),
        max_iters=2, prompts_per_iter=4,
        hooks=[dict(type="EvalHook", interval=100, num_prompts=5, grid_size=3,
                    dataset=dict(type="PromptList", prompts=PROMPTS))],
    ))


def global_std_advantages(group: RankGroup) -> list[float]:
    """GroupNorm(global_std) of fixed rewards of 8 global chains (2 per prompt); this rank's rows."""
    rewards = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.3, 0.8, 0.0])
    rows = torch.arange(group.rank * (8 // group.world_size), (group.rank + 1) * (8 // group.world_size))
    local = rewards[rows]
    rollout = SimpleNamespace(parent=torch.full((len(rows),), -1), leaf_nodes=torch.arange(len(rows)),
                              leaf_prompt_index=torch.arange(len(rows)) // 2, log_prob=torch.zeros(len(rows)),
                              leaf_prompts=[f"p{int(r) // 2}" for r in rows])
    return GroupNorm(global_std=True)(rollout, local, group).leaf.tolist()


def main(out_dir: str) -> None:
    out = Path(out_dir)
    runner = Runner(config(), out / "run")
    runner.train()
    eval_hook = runner.hooks[0]
    record = {
        "eval": eval_hook.evaluate(runner),
        "tracker": runner.advantage.state_dict(),
        "global_std": global_std_advantages(RankGroup(runner.accelerator)),
    }
    (out / f"w{runner.world_size}_rank{runner.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
    close_and_exit()
