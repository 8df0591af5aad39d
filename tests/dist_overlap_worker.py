"""Worker for tests/test_overlap_reward.py, started by torchrun with 2 processes.

``dist_overlap_worker.py OUT train``: 3 iterations with ``overlap_reward=True``; each rank writes its
parameters. ``dist_overlap_worker.py OUT fail``: the reward fails on rank 1 only,
in its thread, at the second rollout; each rank writes the error it got.
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tests.conftest  # noqa: E402,F401  (registers TinyTestPolicy, MeanBrightnessReward)
from tests.dist_worker import tiny_config  # noqa: E402
from tests.worker_exit import close_and_exit  # noqa: E402
from treegrpo.registry import REWARDS  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402


@REWARDS.register_module(force=True)
class FailsOnRank1Reward:
    """Mean brightness; raises on rank 1 at its second call."""

    calls = 0

    def __call__(self, images, prompts):
        FailsOnRank1Reward.calls += 1
        if os.environ.get("RANK") == "1" and FailsOnRank1Reward.calls == 2:
            raise RuntimeError("rank 1 reward backend down")
        return images.mean(dim=(1, 2, 3))


def main(out_dir: str, mode: str) -> None:
    reward = dict(type="FailsOnRank1Reward" if mode == "fail" else "MeanBrightnessReward")
    cfg = tiny_config(overlap_reward=True, dist_timeout_s=60)
    cfg.max_iters, cfg.reward = 3, reward
    runner = Runner(cfg, Path(out_dir) / "run")
    try:
        runner.train()
        outcome = {"error": None}
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    outcome.update(iteration=runner.iteration, pool_closed=runner.pool is None)
    save_file(runner.policy.trainable_state_dict(), str(Path(out_dir) / f"params_rank{runner.rank}.safetensors"))
    (Path(out_dir) / f"{mode}_rank{runner.rank}.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    close_and_exit()
