"""Two CPU processes under torchrun: prompts are sharded, rewards gathered, gradients synchronised."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file

from treegrpo.distributed import collective_timeout

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_worker(*args: str, timeout: float = 240, worker: str = "dist_worker.py") -> subprocess.CompletedProcess:
    """Run tests/<worker> ARGS as 2 CPU processes (one thread each) under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(ROOT / "tests" / worker), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_shard_prompts_and_sync_gradients(tmp_path):
    result = torchrun_worker(str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    # one new run folder, named by rank 0 and used by both
    assert ranks[0]["work_dir"] == ranks[1]["work_dir"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [Path(ranks[0]["work_dir"]).name]
    # deterministic sharding: each rank got half of the global batch, different prompts
    assert len(ranks[0]["prompts"]) == len(ranks[1]["prompts"]) == 2
    assert ranks[0]["prompts"] != ranks[1]["prompts"]
    # rewards gathered across ranks: both see both ranks' rewards, in rank order
    assert ranks[0]["gathered_rewards"] == ranks[1]["gathered_rewards"]
    assert ranks[0]["gathered_rewards"] == ranks[0]["local_rewards"] + ranks[1]["local_rewards"]
    # gradients synchronised: different data, yet identical parameters after the update
    p0 = load_file(str(tmp_path / "params_rank0.safetensors"))
    p1 = load_file(str(tmp_path / "params_rank1.safetensors"))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    from tests.conftest import TinyTestPolicy

    initial = TinyTestPolicy().denoiser.state_dict()
    assert any(not torch.equal(p0[k], initial[k]) for k in p0)


def test_a_hung_rank_fails_the_job_after_dist_timeout_s(tmp_path):
    """Rank 1 stops answering; rank 0's gather fails after the configured 8 s, not torch's 30 min."""
    result = torchrun_worker(str(tmp_path), "stall", "8", timeout=180)
    assert result.returncode != 0
    outcome = json.loads((tmp_path / "stall_rank0.json").read_text())
    assert outcome["error"] is not None and "timed out" in outcome["error"].lower(), outcome
    assert 7 <= outcome["waited_s"] < 30, outcome


def test_dist_timeout_s_must_be_positive():
    assert collective_timeout(Config(dict(dist_timeout_s=90))).timeout.total_seconds() == 90
    assert collective_timeout(Config(dict())).timeout.total_seconds() == 600
    with pytest.raises(ValueError, match="dist_timeout_s must be a positive number"):
        collective_timeout(Config(dict(dist_timeout_s=0)))
