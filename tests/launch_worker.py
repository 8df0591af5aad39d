"""Worker for tests/test_launch.py: runs ``tools/train.py ARGS`` (its ``main``) in this process,
then writes what this rank saw to ``<out>/rank<r>.json`` and its trained tensors to
``<out>/weights_rank<r>.safetensors``.

    torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT \
        tests/launch_worker.py OUT CONFIG --cfg-options max_iters=1
"""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tests.worker_exit import close_and_exit  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tools.train import main as train_main  # noqa: E402

# what torchrun's elastic agent tells each worker about its place in the job
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "TORCHELASTIC_RUN_ID")


def main(out: str, train_argv: list[str]) -> None:
    runner = train_main(train_argv)
    out_dir = Path(out)
    facts = {
        "rank": runner.rank,
        "world_size": runner.world_size,
        "distributed_type": str(runner.accelerator.distributed_type),
        "work_dir": str(runner.work_dir),
        "iteration": runner.iteration,
        "env": {name: os.environ.get(name) for name in LAUNCHER_ENV},
    }
    (out_dir / f"rank{runner.rank}.json").write_text(json.dumps(facts))
    weights = {k: v.detach().cpu().contiguous() for k, v in runner.policy.trainable_state_dict().items()}
    save_file(weights, str(out_dir / f"weights_rank{runner.rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    close_and_exit()
