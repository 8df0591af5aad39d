"""Prompt records end to end: a jsonl row keeps its fields, each leaf's reward call gets the fields
of its own prompt's record (runner, WeightedSum, HTTP, eval), and ToyMetadataReward scores them."""
import json
from pathlib import Path

import pytest
import torch

from conftest import write_config
from test_http_reward import serving  # the module pytest loaded
from tools.eval import score as eval_score
from tools.reward_server import BadRequest, OverLimit, parse_request
from tools.train import main as train_main
from treegrpo.datasets import PromptFile, PromptList, dataset_record
from treegrpo.datasets.prompt_file import MAX_RECORD_BYTES
from treegrpo.datasets.toy import ToyShapesPrompts
from treegrpo.registry import REWARDS
from treegrpo.rewards import HTTPReward, ToyMetadataReward, WeightedSum, accepts_metadata
from treegrpo.rewards.base import RewardError, metadata_caller
from treegrpo.rewards.http import encode_png
from treegrpo.toy.prompts import ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ datasets
def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_rows_keep_their_fields_and_txt_lines_are_prompt_only(tmp_path):
    jsonl = write(tmp_path / "p.jsonl", ['{"prompt": " a cat ", "colour": "red", "n": [1, 2]}',
                                         '{"prompt": "a dog"}'])
    ds = PromptFile(jsonl)
    assert ds[0] == "a cat" and ds.record(0) == {"prompt": "a cat", "colour": "red", "n": [1, 2]}
    assert ds.record(1) == {"prompt": "a dog"}
    ds.record(0)["colour"] = "blue"  # a copy: the dataset is not changed by its users
    assert ds.metadata[0]["colour"] == "red"
    txt = PromptFile(write(tmp_path / "p.txt", ["a cat", "a dog"]))
    assert [txt.record(i) for i in range(2)] == [{"prompt": "a cat"}, {"prompt": "a dog"}]


@pytest.mark.parametrize("line,message", [
    ('[1, 2]', "line 2 must be a JSON object"),
    ('{"text": "a"}', "line 2 has no 'prompt' key"),
    ('{"prompt": 3}', "line 2: 'prompt' must be a non-empty string"),
    ('{"prompt": "a", "x": NaN}', "line 2: every field must be JSON-serialisable"),
    ('{"prompt": "a", "x": "' + "y" * MAX_RECORD_BYTES + '"}', "line 2: the record is"),
])
def test_bad_jsonl_records_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", ['{"prompt": "ok"}', line])
    with pytest.raises(ValueError, match=message) as info:
        PromptFile(path)
    assert str(info.value).startswith(path)


def test_prompt_list_records_and_dataset_record_fallback():
    ds = PromptList(["a cat", {"prompt": "a dog", "id": 7}])
    assert [ds.record(i) for i in range(2)] == [{"prompt": "a cat"}, {"prompt": "a dog", "id": 7}]
    with pytest.raises(ValueError, match=r"prompts\[1\]: every field must be JSON-serialisable"):
        PromptList(["a", {"prompt": "b", "x": object()}])
    assert dataset_record(["a cat", "a dog"], 1) == {"prompt": "a dog"}  # a plain sequence
    toy = ToyShapesPrompts(num_prompts=3, seed=0)
    record = toy.record(2)
    assert record["prompt"] == toy[2] and set(record) == {"prompt", *ATTRIBUTES}
    assert record["colour"] == toy.specs[2].colour and record["shape"] == toy.specs[2].shape


# ------------------------------------------------------------------ signature check
def two_args(images, prompts):
    return torch.zeros(len(prompts))


def test_metadata_is_passed_only_to_rewards_whose_signature_takes_it():
    seen = []

    def keyword(images, prompts, metadata=None):
        seen.append(metadata)
        return torch.zeros(len(prompts))

    def var_keyword(images, prompts, **kwargs):
        seen.append(kwargs["metadata"])
        return torch.zeros(len(prompts))

    assert not accepts_metadata(two_args) and accepts_metadata(keyword) and accepts_metadata(var_keyword)
    assert not accepts_metadata(lambda images, prompts, metadata, /: None)  # positional-only
    images, meta = torch.zeros(2, 3, 4, 4), [{"a": 1}, {"a": 2}]
    for fn in (two_args, keyword, var_keyword):
        assert metadata_caller(fn)(images, ["x", "y"], meta).tolist() == [0.0, 0.0]
    assert seen == [meta, meta]


class Recorder:
    """A reward that remembers the metadata of each call and scores metadata['value']."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts, metadata=None):
        self.calls.append((list(prompts), metadata))
        return torch.tensor([float(m["value"]) for m in metadata])


def test_weighted_sum_forwards_metadata_to_parts_that_take_it():
    recorder = Recorder()
    total = WeightedSum([recorder, two_args], weights=[2.0, 1.0], names=["meta", "plain"])
    out = total(torch.zeros(2, 3, 4, 4), ["x", "y"], metadata=[{"value": 1}, {"value": 3}])
    assert out.tolist() == [2.0, 6.0] and recorder.calls == [(["x", "y"], [{"value": 1}, {"value": 3}])]
    with pytest.raises(ValueError, match="got 2 images but 1 metadata dicts"):
        total(torch.zeros(2, 3, 4, 4), ["x", "y"], metadata=[{"value": 1}])


# ------------------------------------------------------------------ ToyMetadataReward
def test_toy_metadata_reward_scores_the_metadata_attributes_not_the_prompt():
    reward = ToyMetadataReward()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = reward.model(images)
    probs = {name: logits[name].softmax(dim=-1) for name in ATTRIBUTES}
    metadata = [{"colour": "red"}, {"color": "blue", "shape": "square"}, {"shape": "triangle", "size": "small"}]
    expected = torch.stack([
        probs["colour"][0, ATTRIBUTES["colour"].index("red")],
        (probs["colour"][1, ATTRIBUTES["colour"].index("blue")]
         + probs["shape"][1, ATTRIBUTES["shape"].index("square")]) / 2,
        (probs["shape"][2, ATTRIBUTES["shape"].index("triangle")]
         + probs["size"][2, ATTRIBUTES["size"].index("small")]) / 2,
    ])
    got = reward(images, ["ignored", "not a grammar prompt", "x"], metadata=metadata)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got, reward(images, ["a", "b", "c"], metadata=metadata))  # prompt text unread
    with pytest.raises(ValueError, match=r"metadata\[0\]\['colour'\] = 'pink' is not one of"):
        reward(images[:1], ["x"], metadata=[{"colour": "pink"}])
    with pytest.raises(ValueError, match=r"metadata\[0\] gives none of the scored attributes"):
        reward(images[:1], ["x"], metadata=[{"id": 3}])
    with pytest.raises(ValueError, match="needs metadata"):
        reward(images[:1], ["x"])
    with pytest.raises(ValueError, match="attributes must be a non-empty list"):
        ToyMetadataReward(attributes=["hue"])


# ------------------------------------------------------------------ runner
@REWARDS.register_module(force=True)
class RecordingMetadataReward:
    """Scores metadata['value'] and remembers (prompts, metadata) of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts, metadata=None):
        self.calls.append((list(prompts), metadata))
        return torch.tensor([float(m["value"]) for m in metadata])


# The shared tiny run (tests/conftest.py) with records as prompts and 3 prompts per iteration.
RECORDS_EXTRA = """
train_dataset = dict(type='PromptList', prompts=[dict(prompt='p0', value=0), dict(prompt='p1', value=1),
                     dict(prompt='p2', value=2), dict(prompt='p3', value=3)])
prompts_per_iter = 3
"""


@pytest.mark.parametrize("sampler,advantage", [("TreeSampler", "TreeBackup"), ("FlatSampler", "GroupNorm")])
def test_each_leaf_gets_the_record_of_its_own_prompt(tmp_path, sampler, advantage):
    config = write_config(tmp_path, "records.py", sampler=sampler, advantage=advantage,
                          reward="RecordingMetadataReward", extra=RECORDS_EXTRA)
    runner = train_main([config, "--work-dir", str(tmp_path / "run")])
    calls = runner.reward.calls
    assert len(calls) == 2
    for prompts, metadata in calls:
        assert len(prompts) == len(metadata) == 3 * 4  # 3 prompts x 4 leaves (tree 2x2, flat 4)
        assert metadata == [{"value": int(p[1])} for p in prompts]  # 'p2' -> {'value': 2}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for record, (prompts, _) in zip(log, calls):
        assert record["reward/mean"] == pytest.approx(sum(int(p[1]) for p in prompts) / len(prompts))


def test_toy_run_on_a_jsonl_file_with_the_metadata_reward_trains(tmp_path):
    rows = [{"prompt": "a red circle on a blue background", "colour": "red", "shape": "circle"},
            {"prompt": "a small circle", "colour": "green", "shape": "square"},  # not what the text says
            {"prompt": "a small yellow triangle", "color": "yellow", "shape": "triangle", "size": "small"}]
    prompts = write(tmp_path / "toy.jsonl", [json.dumps(r) for r in rows])
    config = tmp_path / "toy_meta.py"
    config.write_text(
        f"_base_ = [{str(ROOT / 'configs' / 'treegrpo_toy_shapes.py')!r}]\n"
        f"train_dataset = dict(_delete_=True, type='PromptFile', path={prompts!r})\n"
        "reward = dict(_delete_=True, type='ToyMetadataReward')\n"
        "max_iters = 2\nprompts_per_iter = 2\nsampler = dict(num_steps=6)\n"
        "hooks = [dict(type='LoggerHook', interval=1), dict(type='EvalHook', interval=2, num_prompts=3,\n"
        f"         grid_size=3, dataset=dict(type='PromptFile', path={prompts!r}))]\n")
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run")])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "reward/mean" in r]
    assert runner.iteration == 2 and len(train) == 2 and isinstance(runner.reward, ToyMetadataReward)
    for record in train:
        assert 0.0 < record["reward/mean"] < 1.0
        assert torch.isfinite(torch.tensor(record["losses/loss"]))
    evals = [r for r in log if "eval/reward_mean" in r]  # EvalHook passes the records' fields too
    assert len(evals) == 2 and all(0.0 < r["eval/reward_mean"] < 1.0 for r in evals)


# ------------------------------------------------------------------ HTTP and eval
def test_http_reward_sends_metadata_and_the_server_passes_it_on():
    recorder = Recorder()
    images = torch.zeros(3, 3, 4, 4)
    meta = [{"value": 1}, {"value": 2}, {"value": 5}]
    with serving(recorder) as url:
        out = HTTPReward(url, retries=0, batch_size=2)(images, ["a", "b", "c"], metadata=meta)
        assert out.tolist() == [1.0, 2.0, 5.0]
        assert recorder.calls == [(["a", "b"], meta[:2]), (["c"], meta[2:])]  # chunked with the images
        big = [{"value": 1, "x": "y" * (64 << 10)}]
        with pytest.raises(RewardError, match="413.*metadata\\[0\\] is"):
            HTTPReward(url, retries=0)(images[:1], ["a"], metadata=big)
    with serving(two_args) as url:  # a two-argument reward behind the server keeps working
        assert HTTPReward(url, retries=0)(images, ["a", "b", "c"], metadata=meta).tolist() == [0.0] * 3


def test_parse_request_metadata():
    body = {"prompts": ["a"], "images": encode_png(torch.zeros(1, 3, 2, 2))}
    assert parse_request(json.dumps(body).encode())[2] is None  # old clients send none
    assert parse_request(json.dumps({**body, "metadata": [{"k": 1}]}).encode())[2] == [{"k": 1}]
    with pytest.raises(BadRequest, match="'metadata' must be a list of 1 JSON objects"):
        parse_request(json.dumps({**body, "metadata": [1]}).encode())
    with pytest.raises(OverLimit):
        parse_request(json.dumps({**body, "metadata": [{"k": "v" * (64 << 10)}]}).encode())


def test_eval_score_passes_the_records_metadata_in_batches():
    recorder = Recorder()
    meta = [{"value": v} for v in (4, 5, 6)]
    out = eval_score(recorder, "meta", torch.zeros(3, 3, 4, 4), ["a", "b", "c"], 2, metadata=meta)
    assert out.tolist() == [4.0, 5.0, 6.0] and [m for _, m in recorder.calls] == [meta[:2], meta[2:]]
    assert eval_score(two_args, "plain", torch.zeros(3, 3, 4, 4), ["a", "b", "c"], 2, metadata=meta).tolist() == [0.0] * 3
