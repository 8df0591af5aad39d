"""The launch configs in configs/accelerate/ and the README's launch commands, as far as CPU allows.

- Every YAML loads with accelerate's own config loader, and the README's ``accelerate launch``
  command for it resolves (through accelerate's launcher code) to the torchrun job we mean:
  processes per node, nodes, node rank, rendezvous endpoint, FSDP2 settings.
- The FSDP YAMLs give an FSDP2 plugin whose transformer auto-wrap finds the blocks of the tiny
  SD3 and FLUX denoisers.
- Two "machines" of one CPU rank each meet through torchrun's c10d rendezvous on 127.0.0.1 and
  run tools/train.py together; and ``accelerate launch --config_file ddp_8gpu.yaml`` starts two
  synchronised CPU processes running tools/train.py.
No GPU here: nothing runs with NCCL, and the FSDP YAMLs are not launched (see the README).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import _filter_args, prepare_multi_gpu_env
from safetensors.torch import load_file
from torch.distributed import run as torchrun

from tests.test_distributed import free_port
from tools.make_tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline
from treegrpo.inference import load_config
from treegrpo.registry import POLICIES, build

ROOT = Path(__file__).resolve().parents[1]
YAMLS = ROOT / "configs" / "accelerate"
TOY = "configs/treegrpo_toy_shapes.py"
FSDP_KEYS = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
             "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT",
             "fsdp_offload_params": False, "fsdp_activation_checkpointing": False}
# file -> (distributed type, total processes, machines, fsdp_config)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1, {}),
    "ddp_8gpu.yaml": (DistributedType.MULTI_GPU, 8, 1, {}),
    "fsdp_8gpu.yaml": (DistributedType.FSDP, 8, 1, FSDP_KEYS),
    "fsdp_2x8gpu.yaml": (DistributedType.FSDP, 16, 2, FSDP_KEYS),
}


def test_the_folder_holds_exactly_the_documented_yamls():
    assert sorted(p.name for p in YAMLS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_yaml_loads_with_accelerates_config_loader(name):
    config = load_config_from_file(str(YAMLS / name))
    assert isinstance(config, ClusterConfig)
    kind, processes, machines, fsdp = EXPECTED[name]
    assert (config.distributed_type, config.num_processes, config.num_machines) == (kind, processes, machines)
    assert {k: config.fsdp_config.get(k) for k in fsdp} == fsdp
    assert not config.use_cpu and config.machine_rank == 0


def resolve_launch(argv: list[str]) -> tuple[argparse.Namespace, dict, object]:
    """What ``accelerate launch ARGV`` would start, without starting it: accelerate's own
    validation and environment, then torchrun's launch config built from the same arguments.
    Returns (accelerate's args, the workers' environment, torchrun's LaunchConfig or None)."""
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if not (args.multi_gpu or args.use_fsdp):
        return args, {}, None  # accelerate's simple launcher: one plain python process
    env = prepare_multi_gpu_env(args)
    torchrun_args = _filter_args(args, torchrun.get_args_parser(),
                                 ["--training_script", args.training_script,
                                  "--training_script_args", args.training_script_args])
    with patch_environment(OMP_NUM_THREADS="1"):
        launch_config, _, _ = torchrun.config_from_args(torchrun_args)
    return args, env, launch_config


def test_single_gpu_command_is_one_plain_process():
    args, _, launch = resolve_launch(["--config_file", str(YAMLS / "single_gpu.yaml"), "tools/train.py", TOY])
    assert launch is None and args.num_processes == 1 and not args.multi_gpu and not args.use_fsdp


@pytest.mark.parametrize("name,fsdp", [("ddp_8gpu.yaml", False), ("fsdp_8gpu.yaml", True)])
def test_one_machine_commands_start_8_processes_on_one_node(name, fsdp):
    args, env, launch = resolve_launch(["--config_file", str(YAMLS / name), "tools/train.py", TOY])
    assert (launch.nproc_per_node, launch.min_nodes, launch.max_nodes) == (8, 1, 1)
    assert args.training_script == "tools/train.py" and args.training_script_args == [TOY]
    assert env.get("ACCELERATE_USE_FSDP") == ("true" if fsdp else None)


@pytest.mark.parametrize("machine_rank", [0, 1])
@pytest.mark.parametrize("backend", ["static", "c10d"])
def test_two_machine_command_joins_the_main_machine(machine_rank, backend):
    # the README's command; the port is a free one so that a test run elsewhere on this machine
    # (accelerate checks the port on machine 0) cannot fail this test
    port = free_port()
    argv = ["--config_file", str(YAMLS / "fsdp_2x8gpu.yaml"), "--machine_rank", str(machine_rank),
            "--main_process_ip", "10.0.0.1", "--main_process_port", str(port)]
    argv += ["--rdzv_backend", "c10d"] if backend == "c10d" else []
    args, env, launch = resolve_launch(argv + ["tools/train.py", TOY, "--work-dir", "/shared/runs/x"])
    assert (launch.nproc_per_node, launch.min_nodes, launch.max_nodes) == (8, 2, 2)
    assert args.node_rank == machine_rank
    assert launch.rdzv_backend == backend  # static unless --rdzv_backend c10d (the YAML cannot set it)
    assert launch.rdzv_endpoint == f"10.0.0.1:{port}"
    assert args.training_script_args == [TOY, "--work-dir", "/shared/runs/x"]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"


def test_two_machine_yaml_rdzv_backend_is_the_one_the_launcher_uses():
    """accelerate 1.16 ignores rdzv_backend in a YAML (its parser default 'static' wins): the
    file must say what really happens."""
    _, _, launch = resolve_launch(["--config_file", str(YAMLS / "fsdp_2x8gpu.yaml"), "--machine_rank", "1",
                                   "--main_process_ip", "10.0.0.1", "tools/train.py", TOY])
    assert load_config_from_file(str(YAMLS / "fsdp_2x8gpu.yaml")).rdzv_backend == launch.rdzv_backend == "static"


@pytest.mark.parametrize("name", ["fsdp_8gpu.yaml", "fsdp_2x8gpu.yaml"])
def test_fsdp_yaml_gives_an_fsdp2_plugin_that_wraps_each_transformer_block(name):
    argv = ["--config_file", str(YAMLS / name)]
    argv += ["--machine_rank", "1", "--main_process_ip", "10.0.0.1"] if "2x8" in name else []
    _, env, _ = resolve_launch(argv + ["tools/train.py", TOY])
    fsdp_env = {k: v for k, v in env.items() if k.startswith("FSDP_")}
    with patch_environment(**fsdp_env):
        plugin = FullyShardedDataParallelPlugin()  # what Accelerator() builds under accelerate launch
    from torch.distributed.fsdp import OffloadPolicy
    from torch.distributed.fsdp.fully_sharded_data_parallel import StateDictType

    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert type(plugin.cpu_offload) is OffloadPolicy  # no CPU offload
    assert plugin.activation_checkpointing is False
    # no class list in the YAML: the denoiser's own _no_split_modules name the blocks to wrap
    for transformer, blocks in [(tiny_sd3_pipeline().transformer, {"JointTransformerBlock"}),
                                (tiny_flux_pipeline().transformer,
                                 {"FluxTransformerBlock", "FluxSingleTransformerBlock"})]:
        policy = fsdp2_prepare_auto_wrap_policy(plugin, transformer)
        wrapped = [type(m).__name__ for m in transformer.modules() if policy(m)]
        assert set(wrapped) == blocks
        assert len(wrapped) == len(transformer.transformer_blocks) + len(getattr(transformer, "single_transformer_blocks", []))


# ---------------------------------------------------------------- real processes on CPU
def small_toy_config(tmp_path: Path) -> Path:
    """The toy config with hooks cheap enough for a test (no 180-prompt evaluation), under a
    unique name: train.py makes new run folders under work_dirs/<config name>/."""
    path = tmp_path / f"launch_test_{uuid.uuid4().hex[:8]}.py"
    path.write_text(f"_base_ = [{str(ROOT / TOY)!r}]\n"
                    "hooks = [dict(type='LoggerHook', interval=1), dict(type='CheckpointHook', interval=1)]\n")
    return path


@pytest.fixture
def runs_of(tmp_path):
    """(config, its work_dirs folder), removed afterwards."""
    config = small_toy_config(tmp_path)
    runs = ROOT / "work_dirs" / config.stem
    yield config, runs
    shutil.rmtree(runs, ignore_errors=True)


TRAIN_OPTIONS = ["--cfg-options", "max_iters=1", "prompts_per_iter=2"]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_nodes_meet_through_c10d_rendezvous_and_train_together(tmp_path, runs_of):
    config, runs = runs_of
    out = tmp_path / "out"
    out.mkdir()
    # the same command on both "machines": one endpoint, one job id
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
           "--rdzv_id", f"launch-{uuid.uuid4().hex[:6]}",
           str(ROOT / "tests" / "launch_worker.py"), str(out), str(config), *TRAIN_OPTIONS]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    try:
        logs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:  # a node left waiting in the rendezvous must not outlive the test
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    facts = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(f["world_size"] == 2 and "MULTI_CPU" in f["distributed_type"] and f["iteration"] == 1 for f in facts)
    # two nodes of one process each, ranked by the rendezvous
    assert sorted(f["env"]["GROUP_RANK"] for f in facts) == ["0", "1"]
    assert all(f["env"]["LOCAL_WORLD_SIZE"] == "1" and f["env"]["GROUP_WORLD_SIZE"] == "2" for f in facts)
    # one new run folder, created by rank 0 and used by both
    assert facts[0]["work_dir"] == facts[1]["work_dir"]
    assert [p.name for p in runs.iterdir()] == [Path(facts[0]["work_dir"]).name]
    assert json.loads((runs / Path(facts[0]["work_dir"]).name / "checkpoints" / "iter_1" / "meta.json")
                      .read_text())["world_size"] == 2

    rank0, rank1 = (load_file(str(out / f"weights_rank{r}.safetensors")) for r in range(2))
    assert set(rank0) == set(rank1) and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    torch.manual_seed(0)  # the config's seed, as the runner sets it before building the policy
    initial = build(POLICIES, load_config(str(config)).policy).trainable_state_dict()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0), "the update changed nothing"


def test_accelerate_launch_with_the_ddp_yaml_starts_two_synchronised_cpu_processes(tmp_path, runs_of):
    """The README's command with --num_processes 2: accelerate's multi-GPU launcher (torchrun
    inside) starts two processes; without CUDA the runner builds Accelerator(cpu=True), so they
    form one gloo group (a process training alone would record world_size 1)."""
    config, _ = runs_of
    work_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(YAMLS / "ddp_8gpu.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()),
           "tools/train.py", str(config), "--work-dir", str(work_dir), *TRAIN_OPTIONS]
    result = subprocess.run(cmd, cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    meta = json.loads((work_dir / "checkpoints" / "iter_1" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["iteration"] == 1
    assert result.stdout.count("work dir: ") == 1  # printed by the main process only
