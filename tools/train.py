"""Train a policy with TreeGRPO or flat GRPO from a config.

    python tools/train.py configs/treegrpo_toy_shapes.py
    python tools/train.py CONFIG --work-dir DIR --cfg-options max_iters=5 update.num_inner_epochs=2
    python tools/train.py CONFIG --resume auto          # newest checkpoint of this config
    python tools/train.py CONFIG --resume work_dirs/x/20260101_120000_seed0_1a2b3c   # a run or checkpoint folder
Several processes: ``torchrun --nproc_per_node 2 tools/train.py CONFIG`` or
``accelerate launch --multi_gpu --num_processes 2 tools/train.py CONFIG``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (plugins/ importable too)
    sys.path.insert(0, str(ROOT))

from mmengine.config import DictAction  # noqa: E402

from treegrpo.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint  # noqa: E402
from treegrpo.config_check import ConfigError  # noqa: E402
from treegrpo.inference import load_config  # noqa: E402
from treegrpo.policies.diffusers_common import ModelNotFoundError  # noqa: E402
from treegrpo.run_files import dump_config  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train with TreeGRPO / GRPO")
    parser.add_argument("config", help="config file path")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: a new "
                        "work_dirs/<config name>/<timestamp>_seed<seed>_<id>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="'auto' (newest checkpoint of this config), a run folder or a "
                        "checkpoints/iter_<n> folder")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. max_iters=10 sampler.num_steps=8")
    return parser.parse_args(argv)


def find_resume(config_name: str, resume: str, work_dir: str | None = None) -> Path:
    """The checkpoint to resume from. 'auto': the newest in ``work_dir`` when given, else in the
    newest run of this config under work_dirs/; otherwise ``resume`` is a run or checkpoint path."""
    if resume != "auto":
        return resolve_checkpoint(resume)
    if work_dir is not None:
        found = list_checkpoints(work_dir)
        if not found:
            raise FileNotFoundError(f"--resume auto found no checkpoint under {work_dir}/checkpoints/")
        return found[-1]
    runs = sorted((ROOT / "work_dirs" / config_name).glob("*"))
    for run in reversed(runs):
        found = list_checkpoints(run)
        if found:
            return found[-1]
    raise FileNotFoundError(f"--resume auto found no checkpoint under work_dirs/{config_name}/")


def main(argv=None) -> Runner:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.seed)
    config_name = Path(args.config).stem
    resume_from = find_resume(config_name, args.resume, args.work_dir) if args.resume else None
    if args.work_dir:
        work_dir = Path(args.work_dir)
    elif resume_from is not None and resume_from.parent.name == "checkpoints":
        work_dir = resume_from.parent.parent  # continue in the run that wrote the checkpoint
    else:
        work_dir = None  # a new run folder work_dirs/<config>/<stamp>_seed<seed>_<id>
    runner = Runner(cfg, work_dir, resume_from=resume_from, runs_root=ROOT / "work_dirs" / config_name)
    if runner.is_main:
        dump_config(cfg, runner.work_dir, runner.resumed_iteration)
        print(f"work dir: {runner.work_dir}" + (f" (resumed from {resume_from})" if resume_from else ""))
    try:
        runner.train()
    except BaseException:
        # close the process group (gloo / NCCL threads) before the error unwinds: a distributed
        # process that exits with it open can abort ("terminate called without an active exception")
        runner.accelerator.end_training()
        raise
    return runner


# Errors that are the user's to fix and whose message says how: printed without a traceback.
USER_ERRORS = (ConfigError, ModelNotFoundError, CheckpointError, FileNotFoundError)


if __name__ == "__main__":
    try:
        main().accelerator.end_training()  # closes the process group of a distributed run cleanly
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
