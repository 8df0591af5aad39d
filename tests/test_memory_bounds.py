"""Bounded memory (issue 12 item 6): the LRU prompt-embedding cache on CPU, precomputed embedding
shards, per-step update batches cut to micro_batch_size, prompts_per_iter at 8 ranks."""
import warnings
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from tools.make_tiny_models import main as make_tiny
from tools.precompute_embeddings import main as precompute
from treegrpo.embedding_cache import EmbeddingCache, EmbeddingStore
from treegrpo.policies import SD3Policy

ROOT = Path(__file__).resolve().parents[1]


class FakeEncoder:
    """prompt -> {'e': [2] = (len, first char code)}, counting the prompts it encodes."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return {"e": torch.tensor([[float(len(p)), float(ord(p[0]))] for p in prompts])}


def test_cache_evicts_least_recently_used_and_returns_what_the_encoder_returns():
    encoder = FakeEncoder()
    cache = EmbeddingCache(max_entries=2)
    out = cache.encode(["aa", "b", "aa"], encoder)
    assert torch.equal(out["e"], encoder(["aa", "b", "aa"])["e"])  # rows in prompt order, repeats too
    assert encoder.calls[0] == ["aa", "b"]  # each unseen prompt encoded once
    cache.encode(["aa"], encoder)  # 'aa' is now the most recently used
    cache.encode(["ccc"], encoder)  # evicts 'b'
    assert list(cache.entries) == ["aa", "ccc"]
    assert encoder.calls[-1] == ["ccc"]
    cache.encode(["b", "aa"], encoder)
    assert encoder.calls[-1] == ["b"] and list(cache.entries) == ["aa", "b"]  # "ccc" evicted
    assert cache.encoded == 4
    assert all(v.device.type == "cpu" for entry in cache.entries.values() for v in entry.values())


def test_cache_entries_are_copies_not_views_of_the_batch():
    cache = EmbeddingCache(max_entries=8)
    cache.encode(["x", "yy"], FakeEncoder())
    row = cache.entries["x"]["e"]
    assert row._base is None and row.untyped_storage().nbytes() == 2 * 4  # its own 2 floats


def test_cache_size_must_be_positive():
    with pytest.raises(ValueError, match="embedding_cache_size must be an integer >= 1"):
        EmbeddingCache(max_entries=0)


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "sd3"])["sd3"]


def test_sd3_policy_bounded_cache_gives_the_encoder_output(tiny_sd3):
    policy = SD3Policy(str(tiny_sd3), resolution=32, embedding_cache_size=2)
    prompts = ["a red cube", "a blue ball", "a green cone", "a red cube"]
    cached = policy.encode_prompts(prompts)
    unique = policy._encode(prompts[:3])  # the batch the cache sent to the encoders
    direct = {key: value[[0, 1, 2, 0]] for key, value in unique.items()}
    assert cached.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key], rtol=0, atol=0)
    cache = policy.__dict__["_embedding_cache"]
    assert len(cache) == 2 and list(cache.entries) == ["a blue ball", "a green cone"]


def test_precomputed_embeddings_replace_the_text_encoders(tiny_sd3, tmp_path):
    prompts = [f"prompt number {i}" for i in range(5)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    config = tmp_path / "cfg.py"
    config.write_text(f"policy = dict(type='SD3Policy', model_path={str(tiny_sd3)!r}, resolution=32)\n"
                      "kernel = dict(type='FlowMatchingKernel', eta=0.7)\n"
                      f"train_dataset = dict(type='PromptFile', path={str(tmp_path / 'prompts.txt')!r})\n")
    out = precompute([str(config), "--out", str(tmp_path / "emb"), "--batch-size", "2", "--shard-size", "3"])
    assert sorted(p.name for p in out.iterdir()) == ["embeddings-00000.safetensors",
                                                     "embeddings-00001.safetensors", "index.json"]
    assert len(EmbeddingStore(out)) == 6  # the 5 prompts and the empty negative prompt

    reference = SD3Policy(str(tiny_sd3), resolution=32)
    expected = reference._encode(prompts[::-1])  # another batch than the tool's: float tolerance
    policy = SD3Policy(str(tiny_sd3), resolution=32, embedding_dir=str(out), embedding_cache_size=2)

    def no_text_encoders(_prompts):
        raise AssertionError("the text encoders ran although the prompts were precomputed")

    policy._encode = no_text_encoders
    got = policy.encode_prompts(prompts[::-1])
    null = policy.null_condition(3)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert null["prompt_embeds"].shape[0] == 3


def test_precomputed_embeddings_of_another_model_are_refused(tiny_sd3, tmp_path):
    (tmp_path / "index.json").write_text('{"policy": "SD3Policy", "model_path": "other/model", '
                                         '"keys": [], "prompts": {}}')
    with pytest.raises(ValueError, match="written for model_path='other/model'"):
        EmbeddingStore(tmp_path, "SD3Policy", str(tiny_sd3))
    with pytest.raises(FileNotFoundError, match="precompute_embeddings.py"):
        EmbeddingStore(tmp_path / "missing")


# ------------------------------------------------------------------ per-step update batches
def test_per_step_batches_are_cut_to_micro_batch_size_in_node_order():
    from treegrpo.update import plan_micro_batches

    parents = torch.arange(10)
    step = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 3, 3])
    plan = plan_micro_batches(parents, step, 1, 2, torch.Generator().manual_seed(0), per_step=True)
    chunks = [m.tolist() for mb in plan for m in mb]
    assert all(len(c) <= 2 for c in chunks)
    by_step = sorted(chunks)  # each step's chunks consecutive parents in node order
    assert by_step == [[0, 1], [2, 3], [4], [5, 6], [7], [8, 9]]
    for first, second in zip(chunks, chunks[1:]):  # a step's chunks follow each other, in order
        if int(step[first[0]]) == int(step[second[0]]):
            assert first[-1] + 1 == second[0]
    two = plan_micro_batches(parents, step, 2, 2, torch.Generator().manual_seed(0), per_step=True)
    steps_per_minibatch = [{int(step[m[0]]) for m in mb} for mb in two]
    assert len(two) == 2 and sum(len(s) for s in steps_per_minibatch) == 3  # no step split across
    assert sorted(torch.cat([torch.cat(mb) for mb in two]).tolist()) == list(range(10))


def test_unknown_update_keys_are_ignored_with_a_warning():
    from treegrpo.update import UPDATE_DEFAULTS, update_settings

    with pytest.warns(UserWarning, match=r"update keys \['micro_batchsize'\] are not used"):
        settings = update_settings(dict(micro_batchsize=4, num_minibatches=2))
    assert settings == {**UPDATE_DEFAULTS, "num_minibatches": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert update_settings(None) == UPDATE_DEFAULTS


# ------------------------------------------------------------------ prompts_per_iter at 8 ranks
def test_every_shipped_config_runs_on_8_processes():
    from treegrpo.config_check import check_numbers
    from treegrpo.inference import load_config

    configs = sorted((ROOT / "configs").glob("*.py")) + sorted((ROOT / "configs" / "ablations").glob("*.py"))
    assert len(configs) > 10
    for path in configs:
        cfg = load_config(path)
        assert cfg.prompts_per_iter % 8 == 0, path.name
        assert check_numbers(cfg, world_size=8) == [], path.name


def test_config_check_names_the_world_size_and_the_fix(monkeypatch):
    from treegrpo.config_check import ConfigError, check_numbers, validate_config

    cfg = Config(dict(prompts_per_iter=12, max_iters=1))
    (problem,) = check_numbers(cfg, world_size=8)
    assert "prompts_per_iter=12 is not divisible by the 8 processes" in problem
    assert "multiple of 8, e.g. 16" in problem
    monkeypatch.setenv("WORLD_SIZE", "8")  # what torchrun / accelerate launch set
    with pytest.raises(ConfigError, match="not divisible by the 8 processes"):
        validate_config(cfg)
    assert check_numbers(cfg, world_size=4) == []


# ------------------------------------------------------------------ 2 processes: eval and statistics
@pytest.fixture(scope="module")
def memory_runs(tmp_path_factory):
    """tests/dist_memory_worker.py as 2 torchrun processes and as 1 in-process run."""
    import json

    from tests.dist_memory_worker import main as worker_main
    from tests.test_distributed import torchrun_worker

    out = tmp_path_factory.mktemp("memory")
    (out / "two").mkdir()
    result = torchrun_worker(str(out / "two"), timeout=300, worker="dist_memory_worker.py")
    assert result.returncode == 0, result.stderr[-4000:]
    (out / "one").mkdir()
    worker_main(str(out / "one"))
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    return out, [load(out / "two" / f"w2_rank{r}.json") for r in range(2)], load(out / "one" / "w1_rank0.json")


def test_sharded_eval_equals_one_process_eval(memory_runs):
    from PIL import Image
    import numpy as np

    out, (rank0, rank1), single = memory_runs
    assert rank0["eval"] == rank1["eval"]  # every rank gets the gathered result
    assert rank0["eval"].keys() == single["eval"].keys()
    for key, value in single["eval"].items():
        assert rank0["eval"][key] == pytest.approx(value, abs=1e-6), key
    grids = [np.asarray(Image.open(out / run / "run" / "eval" / "iter_000002.png")) for run in ("two", "one")]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0].astype(int) - grids[1]).max() <= 1


def test_stat_tracker_is_global_and_identical_on_every_rank(memory_runs):
    _, (rank0, rank1), single = memory_runs
    assert rank0["tracker"] == rank1["tracker"]  # a checkpoint of rank 0 is right for every rank
    history, expected = rank0["tracker"]["history"], single["tracker"]["history"]
    assert history.keys() == expected.keys() and len(history) >= 2
    for prompt, values in expected.items():
        assert history[prompt] == pytest.approx(values, abs=1e-6), prompt
    assert sum(len(v) for v in history.values()) == 2 * 4 * 4  # 2 iterations x 4 prompts x 4 leaves


def test_global_std_uses_the_rewards_of_every_process(memory_runs):
    _, (rank0, rank1), single = memory_runs
    assert rank0["global_std"] + rank1["global_std"] == pytest.approx(single["global_std"], abs=1e-6)
    rewards = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.3, 0.8, 0.0])
    std = rewards.std(unbiased=False)
    assert rank0["global_std"][0] == pytest.approx(((0.1 - 0.3) / (std + 1e-6)).item(), abs=1e-6)
