"""Worker for tests/test_distributed.py, started by torchrun with 2 processes.

``dist_worker.py OUT``: trains the tiny test policy for one iteration and writes what this rank saw
and its parameters. ``dist_worker.py OUT stall SECONDS``: runs with ``dist_timeout_s=SECONDS``; rank 1
stops answering and rank 0 writes how long its gather waited and the error it got.
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tests.conftest  # noqa: E402,F401  (registers TinyTestPolicy, MeanBrightnessReward)
from tests.worker_exit import close_and_exit  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402


def tiny_config(**overrides) -> Config:
    return Config(dict(
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
        **overrides,
    ))


def stall(out_dir: str, timeout_s: float) -> None:
    runner = Runner(tiny_config(dist_timeout_s=timeout_s), Path(out_dir) / "run")
    runner.accelerator.wait_for_everyone()
    if runner.rank == 1:
        time.sleep(120)  # a hung rank (torchrun ends it once rank 0 fails)
        return
    start = time.monotonic()
    try:
        runner.accelerator.gather(torch.ones(1))
        outcome = {"error": None}
    except Exception as exc:  # noqa: BLE001 - recorded for the test, then re-raised
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        outcome["waited_s"] = time.monotonic() - start
        (Path(out_dir) / "stall_rank0.json").write_text(json.dumps(outcome))


def main(out_dir: str) -> None:
    runner = Runner(tiny_config(), None, runs_root=Path(out_dir) / "runs")  # rank 0 names the run
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
        "work_dir": str(runner.work_dir),
    }))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2:3] == ["stall"]:
        stall(sys.argv[1], float(sys.argv[3]))
    else:
        main(sys.argv[1])
    close_and_exit()
