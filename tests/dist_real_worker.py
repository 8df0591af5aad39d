"""Worker for tests/test_distributed_real.py: one training iteration per case on the tiny SD3,
FLUX and SD1.5 pipelines, then this rank's trained tensors written to ``<out>/<case>_rank<r>``.

Started by torchrun with 2 processes, or called in-process (1 process) by the test for the
reference run over the same global batch.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tests.worker_exit import close_and_exit  # noqa: E402
from mmengine.config import Config  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from treegrpo.runner import Runner  # noqa: E402

KERNELS = {"sd3": dict(type="FlowMatchingKernel", eta=0.7), "flux": dict(type="FlowMatchingKernel", eta=0.7),
           "sd15": dict(type="DDIMKernel", eta=1.0)}
POLICIES = {"sd3": "SD3Policy", "flux": "FluxPolicy", "sd15": "StableDiffusionPolicy"}
SAMPLERS = {
    "tree": (dict(type="TreeSampler", num_steps=3, guidance_scale=2.0), dict(type="TreeBackup")),
    "flat": (dict(type="FlatSampler", num_steps=3, group_size=2, guidance_scale=2.0), dict(type="GroupNorm")),
}
# (family, sampler, trained tensors): LoRA through peft (reference = adapters off), or a full
# fine-tune with a frozen reference copy.
CASES = [("sd3", "tree", "lora"), ("sd3", "flat", "lora"), ("flux", "tree", "lora"),
         ("flux", "flat", "lora"), ("sd15", "tree", "lora"), ("sd15", "flat", "lora"),
         ("sd3", "tree", "full")]


def case_name(family: str, sampler: str, trained: str) -> str:
    return f"{family}_{sampler}_{trained}"


def case_config(models: dict, family: str, sampler: str, trained: str) -> Config:
    """One iteration over a global batch of 4 prompts (2 per rank with 2 processes), SGD (an update
    linear in the gradient, so 1- and 2-process runs compare to float tolerance), KL on."""
    policy = dict(type=POLICIES[family], model_path=str(models[family]), resolution=32)
    policy.update(lora=dict(r=4)) if trained == "lora" else policy.update(keep_reference=True)
    sampler_cfg, advantage = SAMPLERS[sampler]
    return Config(dict(
        seed=3, policy=policy, kernel=KERNELS[family],
        schedule=dict(type="FixedWindow", start=1, depth=1 if sampler == "flat" else 2, k=2),
        sampler=sampler_cfg, advantage=advantage, reward=dict(type="Colorfulness"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05),
        train_dataset=dict(type="PromptList", prompts=[f"a photo of thing {i}" for i in range(8)]),
        optimizer=dict(type="SGD", lr=0.5), max_iters=1, prompts_per_iter=4,
        update=dict(micro_batch_size=2), hooks=[],
    ))


def run_cases(models: dict, out_dir: Path) -> None:
    """Train every case for one iteration; write this rank's trained tensors and facts."""
    for family, sampler, trained in CASES:
        name = case_name(family, sampler, trained)
        runner = Runner(case_config(models, family, sampler, trained), out_dir / name)
        runner.train()
        rank = runner.rank
        save_file(runner.policy.trainable_state_dict(), str(out_dir / f"{name}_rank{rank}.safetensors"))
        facts = {"world_size": runner.world_size, "distributed_type": str(runner.accelerator.distributed_type),
                 "policy_holds_bare_module": runner.policy.denoiser is not runner.train_model
                 or runner.world_size == 1,
                 "wrapper": type(runner.train_model).__name__}
        (out_dir / f"{name}_rank{rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_cases(json.loads(sys.argv[2]), Path(sys.argv[1]))
    close_and_exit()
