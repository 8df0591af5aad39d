"""bf16 that still learns: under a bf16 pipeline and bf16 autocast the trained tensors (LoRA
adapters, or the whole denoiser of a full fine-tune) and their AdamW state are float32, so an
lr 1e-6 step changes them (in bf16 it rounds away: the spacing of bf16 numbers near 0.1 is ~5e-4)."""
import pytest
import torch
from accelerate.state import AcceleratorState
from mmengine.config import Config

from tools.make_tiny_models import main as make_tiny
from treegrpo.runner import Runner


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process; the other tests run without it."""
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3"])["sd3"]


def bf16_runner(model_path, trained: str, max_iters: int, work_dir) -> Runner:
    policy = dict(type="SD3Policy", model_path=str(model_path), resolution=32, dtype="bfloat16")
    policy.update(lora=dict(r=4)) if trained == "lora" else policy.update(keep_reference=True)
    return Runner(Config(dict(
        seed=0, policy=policy, kernel=dict(type="FlowMatchingKernel", eta=0.7),
        schedule=dict(type="FixedWindow", start=0, depth=1, k=2), sampler=dict(type="TreeSampler", num_steps=2),
        advantage=dict(type="TreeBackup"), reward=dict(type="Colorfulness"),
        loss=dict(type="GRPOClipLoss", clip_range=0.2, beta=0.05),
        train_dataset=dict(type="PromptList", prompts=["a red cube", "a blue ball"]),
        optimizer=dict(type="AdamW", lr=1e-6), max_iters=max_iters, prompts_per_iter=2, hooks=[],
        mixed_precision="bf16")), work_dir)


@pytest.mark.parametrize("trained", ["lora", "full"])
def test_bf16_run_trains_float32_tensors_that_move_at_lr_1e6(trained, tiny_sd3, tmp_path):
    # LoRA B starts at zero (so A gets no gradient in the first step): two steps move A too.
    runner = bf16_runner(tiny_sd3, trained, max_iters=2 if trained == "lora" else 1, work_dir=tmp_path)
    frozen = [p for p in runner.policy.denoiser.parameters() if not p.requires_grad]
    trainable = runner.policy.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    if trained == "lora":
        assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base stays bf16
    else:
        reference = runner.policy.reference_denoiser
        assert all(p.dtype == torch.bfloat16 for p in reference.parameters())  # frozen copy: bf16
    before = {name: value.clone() for name, value in runner.policy.trainable_state_dict().items()}
    runner.train()
    after = runner.policy.trainable_state_dict()
    assert all(state["exp_avg"].dtype == torch.float32 for state in runner.optimizer.state.values())
    names = [name for name in before if "lora_A" in name or trained == "full"]
    # elements of magnitude > 0.05 that moved: in bf16 an lr-1e-6 step would round away there
    large_moved = sum(int(((before[n].abs() > 0.05) & (before[n] != after[n])).sum()) for n in names)
    assert large_moved > 0
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    for name in moved:
        step = (after[name] - before[name]).abs().max().item()
        assert step < 1e-5 * (runner.iteration + 1), name  # an lr-1e-6 AdamW step, not a bf16 jump
