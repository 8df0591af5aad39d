"""FSDP2 through accelerate's FSDP plugin, and sharded checkpoints (treegrpo/distributed.py,
treegrpo/sharded_checkpoint.py).

The 2-process tests run tests/fsdp_worker.py under torchrun on CPU (gloo): tiny SD3 TreeGRPO with
LoRA and with a full fine-tune, under DDP and under FSDP. accelerate 1.16 ignores the FSDP plugin
on CPU, so the worker sets accelerate's state to FSDP (see its docstring); the sharding, the
training step and the checkpoints are then accelerate's and torch's real FSDP2 code.
"""
import json
import os
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from tests.dist_real_worker import case_config
from tests.test_distributed import torchrun_worker
from treegrpo.checkpoint import CheckpointError
from treegrpo.distributed import (WRAP_CLASSES, check_fsdp_active, check_fsdp_hooks, check_wrap_classes,
                                  fsdp_settings, make_fsdp_plugin)
from treegrpo.hooks.ema import EMAHook
from treegrpo.registry import POLICIES, build
from treegrpo.runner import Runner
from treegrpo.sharded_checkpoint import load_sharded_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_environment():
    """accelerate's Accelerator(fsdp_plugin=...) sets ACCELERATE_USE_FSDP in os.environ; keep it
    out of the tests that follow."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    result = torchrun_worker(str(out), json.dumps({"sd3": tiny_models["sd3"]}), timeout=600,
                             worker="fsdp_worker.py")
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def facts(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("trained", ["lora", "full"])
def test_fsdp_shards_the_denoiser_and_updates_like_ddp(runs, trained):
    fsdp, ddp = facts(runs, f"{trained}_fsdp"), facts(runs, f"{trained}_ddp")
    for rank in fsdp:
        assert rank["distributed_type"] == "DistributedType.FSDP" and rank["sharded"]
        # FSDP2 shards in place: the policy's module is what the runner trains and samples with
        assert rank["train_model_is_policy_module"]
        assert rank["local_numel"] == rank["full_numel"] // 2  # each rank holds half
    assert all(not rank["sharded"] and rank["local_numel"] == rank["full_numel"] for rank in ddp)

    sharded = load_file(str(runs / f"{trained}_fsdp.safetensors"))
    replicated = {k.removeprefix("module."): v for k, v in load_file(str(runs / f"{trained}_ddp.safetensors")).items()}
    initial = load_file(str(runs / f"{trained}_fsdp" / "checkpoints" / "iter_1" / "model.safetensors"))
    assert set(sharded) == set(replicated) == set(initial)
    moved = max((replicated[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-5  # iteration 2 changed the weights, so the comparison below means something
    for key in sharded:  # two iterations of SGD with momentum under FSDP equal DDP's
        torch.testing.assert_close(sharded[key], replicated[key], rtol=1e-5, atol=1e-5 * moved, msg=key)


def test_gradient_checkpointing_under_fsdp_gives_the_same_update(runs):
    plain = load_file(str(runs / "lora_fsdp.safetensors"))
    checkpointed = load_file(str(runs / "lora_fsdp_checkpointing.safetensors"))
    assert set(plain) == set(checkpointed)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-6, atol=1e-8, msg=key)
    assert all(rank["sharded"] for rank in facts(runs, "lora_fsdp_checkpointing"))


def test_bf16_under_fsdp_trains_float32_adapters(runs, tiny_models):
    assert all(rank["sharded"] for rank in facts(runs, "lora_fsdp_bf16"))
    trained = load_file(str(runs / "lora_fsdp_bf16.safetensors"))
    torch.manual_seed(3)  # the runner's seed: the same LoRA initialisation
    initial = build(POLICIES, dict(case_config(tiny_models, "sd3", "tree", "lora").policy,
                                   dtype="bfloat16")).trainable_state_dict()
    assert set(trained) == set(initial)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in trained.values())
    assert max((trained[k] - initial[k]).abs().max().item() for k in trained) > 1e-5


@pytest.mark.parametrize("trained", ["lora", "full"])
def test_sharded_checkpoint_holds_every_rank_and_a_gathered_export(runs, trained):
    folder = runs / f"{trained}_fsdp" / "checkpoints" / "iter_1"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp", "rank_0.pt",
            "rank_1.pt", "training_state.pt", "meta.json", "model.safetensors"} <= names
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["sharded"] and meta["world_size"] == 2 and meta["iteration"] == 1
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    # the gathered tensors are the same file the DDP run writes, to float tolerance
    gathered = load_file(str(folder / "model.safetensors"))
    unsharded = load_file(str(runs / f"{trained}_ddp" / "checkpoints" / "iter_1" / "model.safetensors"))
    assert set(gathered) == set(unsharded)
    for key in gathered:
        torch.testing.assert_close(gathered[key], unsharded[key], rtol=1e-5, atol=1e-7, msg=key)
    if trained == "lora":  # diffusers layout, the same tensors as the unsharded export
        export = load_file(str(folder / "lora" / "pytorch_lora_weights.safetensors"))
        reference = load_file(str(runs / "lora_ddp" / "checkpoints" / "iter_1" / "lora" / "pytorch_lora_weights.safetensors"))
        assert set(export) == set(reference) and export
        assert all(torch.allclose(export[k], reference[k], atol=1e-7) for k in export)
    else:  # a full transformer/ folder loadable by diffusers, holding the gathered weights
        from diffusers import SD3Transformer2DModel

        model = SD3Transformer2DModel.from_pretrained(str(folder / "transformer"))
        state = model.state_dict()
        assert set(gathered) < set(state)  # + the buffers (pos_embed), which FSDP does not shard
        assert all(torch.equal(state[k], gathered[k]) for k in gathered)
        assert (folder / "transformer" / "config.json").is_file()


def test_tools_read_a_sharded_checkpoint_like_an_unsharded_one(runs, tiny_models, tmp_path):
    from tools.export_lora import main as export_main
    from treegrpo.inference import load_policy

    folder = runs / "lora_fsdp" / "checkpoints" / "iter_1"
    cfg = case_config(tiny_models, "sd3", "tree", "lora")
    policy, _ = load_policy(cfg, folder)  # what tools/eval.py loads: the gathered model.safetensors
    gathered = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(policy.trainable_state_dict()[k], gathered[k]) for k in gathered)
    comfy = load_file(str(export_main([str(folder), "--out", str(tmp_path / "lora.safetensors"),
                                       "--family", "sd3"])))
    reference = load_file(str(export_main([str(runs / "lora_ddp" / "checkpoints" / "iter_1"), "--out",
                                           str(tmp_path / "ddp.safetensors"), "--family", "sd3"])))
    assert set(comfy) == set(reference) and comfy
    assert all(torch.allclose(comfy[k], reference[k], atol=1e-6) for k in comfy)


def test_resume_from_a_sharded_checkpoint_is_bit_identical(runs):
    continued = load_file(str(runs / "lora_fsdp.safetensors"))
    resumed = load_file(str(runs / "lora_resumed.safetensors"))
    assert set(continued) == set(resumed)
    assert all(torch.equal(continued[k], resumed[k]) for k in continued)
    assert facts(runs, "lora_resumed")[0]["sharded"]


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_each_rank_resumes_its_own_reward_statistics(runs, layout):
    """Per-prompt statistics are global (gathered rewards: the same on every process); a
    checkpoint keeps every rank's copy and each process resumes its own."""
    folder = runs / f"lora_{layout}" / "checkpoints" / "iter_1"
    if layout == "ddp":
        saved = torch.load(folder / "training_state.pt", weights_only=True)["advantage_per_rank"]
    else:
        saved = [torch.load(folder / f"rank_{r}.pt", weights_only=True)["advantage"] for r in range(2)]
    assert len(saved) == 2 and saved[0]["history"] and saved[0] == saved[1]
    resumed = "lora_resumed" if layout == "fsdp" else "lora_ddp_resumed"
    continued, again = facts(runs, f"lora_{layout}"), facts(runs, resumed)
    for rank in range(2):  # after iteration 2 the resumed run's statistics are the continued run's
        assert again[rank]["reward_history"] == continued[rank]["reward_history"]
    continued_weights = load_file(str(runs / f"lora_{layout}.safetensors"))
    resumed_weights = load_file(str(runs / f"{resumed}.safetensors"))
    assert all(torch.equal(continued_weights[k], resumed_weights[k]) for k in continued_weights)


def test_a_save_that_fails_on_one_rank_fails_on_all_and_leaves_nothing(runs):
    rank0, rank1 = (json.loads((runs / f"failed_save_rank{r}.json").read_text()) for r in range(2))
    assert rank0["error"] == "OSError: disk full (simulated)"
    assert rank1["error"].startswith("CheckpointError") and "failed on another rank" in rank1["error"]
    assert rank0["left"] == rank1["left"] == []  # no iter_9, no iter_9.tmp-<pid>


def test_resume_with_another_world_size_names_both(runs):
    with pytest.raises(CheckpointError, match=r"written by 2 processes, this run has 1.*resume it with 2"):
        load_sharded_checkpoint(runs / "lora_fsdp" / "checkpoints" / "iter_1", None, None, world_size=1)


def test_a_sharded_checkpoint_is_not_resumed_without_fsdp(runs, tiny_models, tmp_path):
    cfg = case_config(tiny_models, "sd3", "tree", "lora")
    with pytest.raises(CheckpointError, match="written with fsdp and this run is configured without"):
        Runner(cfg, tmp_path / "run", resume_from=runs / "lora_fsdp" / "checkpoints" / "iter_1")


def test_fsdp_on_cpu_is_refused_not_silently_ddp(tiny_models, tmp_path):
    cfg = case_config(tiny_models, "sd3", "tree", "lora")
    cfg.fsdp = dict()
    with pytest.raises(ValueError, match=r"fsdp is set but accelerate runs .*fsdp=None"):
        Runner(cfg, tmp_path / "run")


def test_an_fsdp_launch_without_the_fsdp_key_is_refused():
    launched = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=8)
    with pytest.raises(ValueError, match="launched for FSDP .* has fsdp=None: set fsdp=dict"):
        check_fsdp_active(launched, None)
    check_fsdp_active(launched, fsdp_settings(dict(), dict(type="SD3Policy")))  # the supported setup
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, num_processes=8)
    check_fsdp_active(ddp, None)
    with pytest.raises(ValueError, match="runs DistributedType.MULTI_GPU with 8 process"):
        check_fsdp_active(ddp, fsdp_settings(dict(), dict(type="SD3Policy")))


def test_fsdp_settings_defaults_per_family_and_plugin():
    settings = fsdp_settings(dict(reshard_after_forward=False), dict(type="FluxPolicy"))
    assert settings == dict(wrap_classes=["FluxTransformerBlock", "FluxSingleTransformerBlock"],
                            reshard_after_forward=False, cpu_offload=False)
    assert fsdp_settings(None, dict(type="SD3Policy")) is None
    plugin = make_fsdp_plugin(settings)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is False
    assert plugin.transformer_cls_names_to_wrap == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)


@pytest.mark.parametrize("fsdp, policy, message", [
    (dict(reshard=True), "SD3Policy", r"unknown fsdp key\(s\) \['reshard'\]"),
    (dict(cpu_offload="yes"), "SD3Policy", "fsdp.cpu_offload must be True or False"),
    (dict(), "ToyPolicy", "no default block classes for policy 'ToyPolicy'"),
    (dict(wrap_classes="JointTransformerBlock"), "SD3Policy", "non-empty list of class names"),
    (True, "SD3Policy", "fsdp must be None"),
])
def test_bad_fsdp_settings_are_named(fsdp, policy, message):
    with pytest.raises(ValueError, match=message):
        fsdp_settings(fsdp, dict(type=policy))


@pytest.mark.parametrize("family, policy", [("sd3", "SD3Policy"), ("flux", "FluxPolicy"),
                                            ("sd15", "StableDiffusionPolicy")])
def test_wrap_classes_occur_in_each_family(tiny_models, family, policy):
    denoiser = build(POLICIES, dict(type=policy, model_path=tiny_models[family], resolution=32)).denoiser
    check_wrap_classes(denoiser, list(WRAP_CLASSES[policy]))
    with pytest.raises(ValueError, match=r"\['NoSuchBlock'\] do not occur .*block classes include"):
        check_wrap_classes(denoiser, ["NoSuchBlock"])


def test_ema_is_refused_under_fsdp():
    check_fsdp_hooks([])
    with pytest.raises(ValueError, match="EMAHook.*fsdp=None"):
        check_fsdp_hooks([EMAHook()])


def test_fsdp_is_a_known_config_key():
    from treegrpo.config_check import KNOWN_KEYS

    assert "fsdp" in KNOWN_KEYS
