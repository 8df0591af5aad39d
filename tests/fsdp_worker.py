"""Worker for tests/test_fsdp.py, started by torchrun with 2 CPU processes (gloo): tiny SD3 TreeGRPO
runs under DDP and under FSDP2 through accelerate's FSDP plugin, a sharded checkpoint, a resume.

accelerate 1.16 drops its FSDP plugin on CPU (``Accelerator(cpu=True)`` reports MULTI_CPU and
prepares DDP), so this worker sets accelerate's state to FSDP after the runner's Accelerator is made
(:func:`emulate_fsdp_on_cpu`): everything after that is accelerate's and torch's real FSDP2 code
(``fsdp2_prepare_model``, ``fully_shard`` per block, ``no_sync``, ``clip_grad_norm_``) on gloo.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

import treegrpo.runner as runner_module  # noqa: E402
from tests.dist_real_worker import case_config  # noqa: E402
from tests.worker_exit import close_and_exit  # noqa: E402
from treegrpo.distributed import make_accelerator, make_fsdp_plugin  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402
from treegrpo.sharded_checkpoint import gather_trainable, save_sharded_checkpoint  # noqa: E402


def emulate_fsdp_on_cpu(cfg, settings, kwargs_handlers):
    """The runner's Accelerator, with accelerate's state set to what it is on GPUs under FSDP."""
    accelerator = make_accelerator(cfg, settings, kwargs_handlers)
    fsdp = settings is not None
    kind = DistributedType.FSDP if fsdp else DistributedType.MULTI_CPU
    PartialState._shared_state["distributed_type"] = kind
    AcceleratorState._shared_state["distributed_type"] = kind
    plugin = make_fsdp_plugin(settings) if fsdp else None
    if fsdp and cfg.get("mixed_precision", "no") != "no":  # accelerate does this for FSDP on GPUs
        plugin.set_mixed_precision(cfg.mixed_precision)
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return accelerator


def config(models: dict, trained: str, fsdp: bool, max_iters: int):
    cfg = case_config(models, "sd3", "tree", trained)
    cfg.optimizer = dict(type="SGD", lr=0.5, momentum=0.9)  # momentum: optimizer state to restore
    cfg.max_iters = max_iters
    cfg.policy.cache_prompt_embeds = False  # encoded batch by batch: the same floats after a resume
    cfg.hooks = [dict(type="CheckpointHook", interval=1, max_keep=0)]
    cfg.advantage = dict(type="TreeBackup", stat_tracking=dict(buffer_size=4, min_count=1))  # per rank
    if fsdp:
        cfg.fsdp = dict()
    return cfg


def finish(runner: Runner, out: Path, name: str) -> None:
    """Write the gathered trained tensors (rank 0) and this rank's facts about the sharding."""
    full = gather_trainable(runner.train_model, keep=True)
    trained = [p for p in runner.policy.denoiser.parameters() if p.requires_grad]
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in trained)
    facts = {"distributed_type": str(runner.accelerator.distributed_type),
             "train_model_is_policy_module": runner.train_model is runner.policy.denoiser,
             "sharded": all(isinstance(p, DTensor) for p in trained),
             "local_numel": local, "full_numel": sum(t.numel() for t in full.values()),
             "reward_history": runner.advantage.state_dict()["history"]}
    (out / f"{name}_rank{runner.rank}.json").write_text(json.dumps(facts))
    if runner.rank == 0:
        save_file(full, str(out / f"{name}.safetensors"))


def main(out: Path, models: dict) -> None:
    runner_module.make_accelerator = emulate_fsdp_on_cpu
    for trained in ("lora", "full"):
        for fsdp in (False, True):
            name = f"{trained}_{'fsdp' if fsdp else 'ddp'}"
            runner = Runner(config(models, trained, fsdp, max_iters=2), out / name)
            runner.train()
            finish(runner, out, name)
    # the DDP LoRA run resumed from its (unsharded) iteration-1 checkpoint
    runner = Runner(config(models, "lora", False, max_iters=2), out / "lora_ddp_resumed",
                    resume_from=out / "lora_ddp" / "checkpoints" / "iter_1")
    runner.train()
    finish(runner, out, "lora_ddp_resumed")
    # the same FSDP LoRA run with diffusers' gradient checkpointing in every block
    cfg = config(models, "lora", True, max_iters=2)
    cfg.policy.gradient_checkpointing = True
    runner = Runner(cfg, out / "lora_fsdp_checkpointing")
    runner.train()
    finish(runner, out, "lora_fsdp_checkpointing")
    # resume the FSDP LoRA run from its sharded iteration-1 checkpoint and train iteration 2 again
    runner = Runner(config(models, "lora", True, max_iters=2), out / "lora_resumed",
                    resume_from=out / "lora_fsdp" / "checkpoints" / "iter_1")
    runner.train()
    finish(runner, out, "lora_resumed")
    save_failing_on_rank0(runner, out)
    # bf16 weights and autocast: FSDP's mixed precision all-gathers in bf16, the LoRA stays float32.
    # accelerate fixes mixed_precision once per process: its state is reset first (hence last here)
    AcceleratorState._reset_state()
    cfg = config(models, "lora", True, max_iters=1)
    cfg.policy.dtype, cfg.mixed_precision = "bfloat16", "bf16"
    runner = Runner(cfg, out / "lora_fsdp_bf16")
    runner.train()
    finish(runner, out, "lora_fsdp_bf16")


def save_failing_on_rank0(runner: Runner, out: Path) -> None:
    """A sharded save whose export fails on the main rank: every rank raises, nothing is left."""
    def export(folder: Path, full: dict) -> None:
        raise OSError("disk full (simulated)")

    target = out / "failed_save" / "iter_9"
    try:
        save_sharded_checkpoint(target, runner.train_model, runner.optimizer, {}, {}, {"iteration": 9}, export)
        message = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        message = f"{type(exc).__name__}: {exc}"
    left = sorted(p.name for p in target.parent.iterdir()) if target.parent.exists() else []
    (out / f"failed_save_rank{runner.rank}.json").write_text(json.dumps({"error": message, "left": left}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
    close_and_exit()
