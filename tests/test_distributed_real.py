"""DDP on the real generator classes: 2 CPU processes (torchrun, gloo) train the tiny SD3, FLUX and
SD1.5 pipelines with TreeGRPO and flat GRPO (LoRA, and a full fine-tune with a reference copy).

After one update the trained tensors are identical on both ranks and equal, to float tolerance,
to one process training on the same global batch: the runner runs the training forwards through
accelerate's DDP wrapper while the policy keeps its bare module (the bug this guards against:
reading ``.dtype`` through a DDP wrapper crashed the first forward), and sampling noise is indexed
by global prompt, so the world size does not change what is sampled.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.dist_real_worker import CASES, case_config, case_name, run_cases
from tests.test_distributed import torchrun_worker
from treegrpo.registry import POLICIES, build


@pytest.fixture(scope="module")
def two_process_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun_worker(str(out), json.dumps(tiny_models), timeout=600, worker="dist_real_worker.py")
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def one_process_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run_cases(tiny_models, out)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: case_name(*c))
def test_two_ranks_agree_with_each_other_and_with_one_process(case, tiny_models, two_process_run, one_process_run):
    name = case_name(*case)
    facts = [json.loads((two_process_run / f"{name}_rank{r}.json").read_text()) for r in range(2)]
    assert all(f["world_size"] == 2 and "MULTI_CPU" in f["distributed_type"] for f in facts)
    assert all(f["wrapper"] == "DistributedDataParallel" and f["policy_holds_bare_module"] for f in facts)

    rank0, rank1 = (load_file(str(two_process_run / f"{name}_rank{r}.safetensors")) for r in range(2))
    single = load_file(str(one_process_run / f"{name}_rank0.safetensors"))
    assert set(rank0) == set(rank1) == set(single)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged after the update"

    torch.manual_seed(3)  # the runner's seed: the same LoRA initialisation
    initial = build(POLICIES, case_config(tiny_models, *case).policy).trainable_state_dict()
    # The updates (not the weights, which are much larger than one SGD step) must agree.
    two, one = ({k: run[k] - initial[k] for k in run} for run in (rank0, single))
    moved = max(delta.abs().max().item() for delta in one.values())
    assert moved > 1e-6  # the update did something, so the comparison below means something
    for key in two:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-3 * moved, msg=key)
