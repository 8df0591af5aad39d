"""tools/finish_agreement.py: the within-tree agreement by hand and one toy run."""
import json
import math
from pathlib import Path

import pytest
import torch

from tools.finish_agreement import main, within_tree_agreement

ROOT = Path(__file__).resolve().parents[1]


def test_agreement_by_hand():
    full = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    same = within_tree_agreement(full, 2 * full + 5)  # rescaled and shifted per tree: same advantages
    assert same == {"correlation": pytest.approx(1.0), "sign_agreement": 1.0}
    assert within_tree_agreement(full, -full)["correlation"] == pytest.approx(-1.0)
    # centred full: [-1.5, -0.5, 0.5, 1.5], [-0.5, -0.5, 0.5, 0.5]; centred coarse: [-1, 1, -1, 1], [-0.5, -0.5, 0.5, 0.5]
    coarse = torch.tensor([[0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    dot = (1.5 - 0.5 - 0.5 + 1.5) + 4 * 0.25
    norms = math.sqrt(2 * 2.25 + 2 * 0.25 + 4 * 0.25) * math.sqrt(4 + 1)
    result = within_tree_agreement(full, coarse)
    assert result["correlation"] == pytest.approx(dot / norms)
    assert result["sign_agreement"] == pytest.approx(6 / 8)  # leaves 2 and 3 of tree 0 flip
    constant = within_tree_agreement(full, torch.ones_like(full))
    assert math.isnan(constant["correlation"]) and constant["sign_agreement"] == 0.0
    with pytest.raises(ValueError, match="must be \\[P, L\\] of the same shape"):
        within_tree_agreement(full, full[:1])


def test_toy_run_full_suffix_agrees_exactly_and_files_are_written(tmp_path):
    out = tmp_path / "fa"
    result = main([str(ROOT / "configs/treegrpo_toy_layout.py"), "--prompts", str(ROOT / "data/toy_eval_prompts.txt"),
                   "--num-prompts", "3", "--starts", "0", "1", "--suffix-steps", "1", "9", "--batch", "2",
                   "--out", str(out), "--cfg-options", "sampler.num_steps=6"])
    rows = {(r["start"], r["suffix_steps"]): r for r in result["rows"]}
    assert set(rows) == {(0, 1), (0, 9), (1, 1), (1, 9)}
    for start in (0, 1):
        full = rows[(start, 9)]  # 9 >= the steps left: the full finish again, bit for bit
        assert full["forwards_per_leaf"] == full["full_suffix"] == 6 - start - 3
        assert full["mean_coarse"] == full["mean_full"] and full["correlation"] == pytest.approx(1.0)
        one = rows[(start, 1)]
        assert one["forwards_per_leaf"] == 1 and -1.0 <= one["correlation"] <= 1.0
        assert 0.0 <= one["mean_coarse"] <= 1.0
    assert rows[(0, 1)]["mean_coarse"] != rows[(0, 1)]["mean_full"]  # 1 of 3 steps: a different image
    assert json.loads((out / "finish_agreement.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| 1 | 2 | 1 | 1 |" in (out / "finish_agreement.md").read_text()


def test_bad_arguments():
    with pytest.raises(ValueError, match="--suffix-steps must all be >= 1"):
        main(["configs/treegrpo_toy_layout.py", "--prompts", "data/toy_eval_prompts.txt", "--suffix-steps", "0"])
    with pytest.raises(ValueError, match="--starts must be in 0..7"):
        main([str(ROOT / "configs/treegrpo_toy_layout.py"), "--prompts", str(ROOT / "data/toy_eval_prompts.txt"),
              "--starts", "8"])
