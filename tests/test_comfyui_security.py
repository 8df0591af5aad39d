"""A workflow cannot make the ComfyUI nodes import or call anything outside the registries, nor
reach a URL: the attacks of issue 11 (a dotted ``type`` in a WeightedSum part or in ``options``,
``_delete_`` / ``_base_`` / ``custom_imports`` at any depth, HTTPReward under another name or
nested) are refused before anything is built, and the reward classes are checked by class."""
import http.server
import json
import sys
import threading

import pytest
import torch

from comfyui_nodes import logic
from comfyui_nodes.safety import check_built_reward, check_reward_spec, pack_allows
from treegrpo.registry import REWARDS
from treegrpo.rewards.combine import WeightedSum
from treegrpo.rewards.http import HTTPReward
from treegrpo.rewards.image_stats import Colorfulness

PROMPT = "a small red circle"
IMAGES = torch.rand(2, 8, 8, 3)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A model folder with a toy config; the test runs in an empty folder (``touch pwned`` lands there)."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "toy.py").write_text(f"_base_ = ['{checkout}/configs/treegrpo_toy_shapes.py']\n")
    monkeypatch.setenv("TREEGRPO_COMFY_ROOT", str(folder))
    monkeypatch.setitem(sys.modules, "folder_paths", None)
    monkeypatch.setitem(sys.modules, "comfy", None)
    monkeypatch.chdir(tmp_path)
    logic._REWARD_CACHE.clear()
    return tmp_path


@pytest.fixture
def server():
    """A local HTTP server that records every request it gets (a reward must never reach it)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score", hits
    httpd.shutdown()
    httpd.server_close()


def test_issue_attacks_raise_and_run_nothing(root):
    with pytest.raises(ValueError, match=r"reward_kwargs.rewards\[0\].type: unknown reward 'os.system'"):
        logic.score_images(IMAGES, PROMPT, "WeightedSum",
                           '{"rewards":[{"type":"os.system","command":"touch pwned"}],"weights":[1]}')
    with pytest.raises(ValueError, match="options.kernel._delete_: a workflow may not set"):
        logic.load_pipeline("toy.py", "", "cpu", "",
                            '{"kernel":{"_delete_":true,"type":"os.system","command":"touch pwned"}}')
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("options, where", [
    ({"kernel": {"type": "os.system", "command": "touch pwned"}}, "options.kernel.type"),
    ({"kernel.type": "os.system", "kernel.command": "touch pwned"}, "options.kernel.type"),
    ({"policy": {"lora": {"_delete_": True}}}, "options.policy.lora._delete_"),
    ({"custom_imports": {"imports": ["os"]}}, "options.custom_imports"),
    ({"policy": {"custom_imports.imports": ["os"]}}, "options.policy.custom_imports.imports"),
    ({"_base_": ["/etc/passwd"]}, "options._base_"),
    ({"hooks": [{"type": "EvalHook"}]}, r"options.hooks\[0\].type"),
    ({"kernel": {"_scope_": "mmdet"}}, "options.kernel._scope_"),
])
def test_options_refuse_class_and_import_keys_at_any_depth(root, options, where):
    with pytest.raises(ValueError, match=f"{where}: a workflow may not set"):
        logic.load_pipeline("toy.py", "", "cpu", "", json.dumps(options))
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("reward, kwargs, match", [
    ("JPEGCompressibility", {"type": "os.system"}, "reward_kwargs.type: a workflow may not set"),
    ("Colorfulness", {"extra": [{"_delete_": True}]}, r"reward_kwargs.extra\[0\]._delete_"),
    ("WeightedSum", {"weights": [1], "rewards": [{"type": "Colorfulness", "x": {"type": "os.system"}}]},
     r"reward_kwargs.rewards\[0\].x.type: a workflow"),
    ("WeightedSum", {"weights": [1], "rewards": [{"type": "Colorfulness", "_base_": "a.py"}]},
     r"rewards\[0\]._base_"),
    ("WeightedSum", {"weights": [1], "rewards": ["os.system"]}, r"rewards\[0\] must be an object naming its reward"),
    ("WeightedSum", {"weights": [1], "rewards": [{"type": ["os", "system"]}]}, "is not a class registered"),
    ("WeightedSum", {"weights": [1], "rewards": [{"type": "builtins.eval"}]}, "unknown reward 'builtins.eval'"),
    ("os.system", {"command": "touch pwned"}, "reward: unknown reward 'os.system'"),
])
def test_reward_kwargs_name_no_classes_but_weighted_sum_parts(root, reward, kwargs, match):
    with pytest.raises(ValueError, match=match):
        logic.score_images(IMAGES, PROMPT, reward, json.dumps(kwargs))
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("reward, kwargs", [
    ("WeightedSum", {"weights": [1], "rewards": [{"type": "treegrpo.HTTPReward", "url": "URL"}]}),
    ("WeightedSum", {"weights": [1, 1], "rewards": [{"type": "Colorfulness"}, {"type": "WeightedSum", "weights": [1],
                                                    "rewards": [{"type": "HTTPReward", "url": "URL"}]}]}),
    ("treegrpo.HTTPReward", {"url": "URL"}),
])
def test_http_reward_is_refused_by_class_under_any_name(root, server, reward, kwargs):
    url, hits = server
    with pytest.raises(ValueError, match="HTTPReward is not available in the ComfyUI nodes.*SSRF"):
        logic.score_images(IMAGES, PROMPT, reward, json.dumps(kwargs).replace("URL", url))
    with pytest.raises(ValueError, match="unknown reward 'treegrpo.rewards.http.HTTPReward'"):
        logic.score_images(IMAGES, PROMPT, "WeightedSum", json.dumps(
            {"weights": [1], "rewards": [{"type": "treegrpo.rewards.http.HTTPReward", "url": url}]}))
    with pytest.raises(ValueError, match="SSRF"):  # the pipeline config's own reward is checked too
        logic.build_reward("config", "", {"type": "WeightedSum", "weights": [1],
                                          "rewards": [{"type": "treegrpo.HTTPReward", "url": url}]})
    assert hits == []


def test_only_shipped_local_rewards_and_opted_in_plugins_run(root, monkeypatch):
    class PluginReward(Colorfulness):
        pass

    class OptedInReward(Colorfulness):
        comfyui_allowed = True

    class PluginHTTP(HTTPReward):
        comfyui_allowed = True

    for cls in (PluginReward, OptedInReward, PluginHTTP):
        monkeypatch.setitem(REWARDS.module_dict, cls.__name__, cls)
    assert not pack_allows(PluginReward) and pack_allows(OptedInReward) and not pack_allows(PluginHTTP)
    names = logic.reward_names()
    assert "OptedInReward" in names and "PluginReward" not in names and "PluginHTTP" not in names
    assert {"Colorfulness", "JPEGCompressibility", "WeightedSum", "HPSv2"} <= set(names)
    with pytest.raises(ValueError, match="PluginReward is not enabled.*comfyui_allowed = True"):
        logic.score_images(IMAGES, PROMPT, "PluginReward")
    with pytest.raises(ValueError, match=r"rewards\[0\].type: PluginHTTP is not available.*SSRF"):
        check_reward_spec({"type": "WeightedSum", "weights": [1], "rewards": [{"type": "PluginHTTP", "url": "x"}]})
    scores, _ = logic.score_images(IMAGES, PROMPT, "WeightedSum", json.dumps(
        {"weights": [1, 2], "rewards": [{"type": "OptedInReward"}, {"type": "treegrpo.Colorfulness"}]}))
    expected = 3 * Colorfulness()(IMAGES.permute(0, 3, 1, 2), [PROMPT] * 2)
    assert torch.allclose(torch.tensor(scores), expected, atol=1e-5)


def test_built_rewards_are_checked_again(root, server):
    url, hits = server
    mixed = WeightedSum(rewards=[Colorfulness(), HTTPReward(url=url)], weights=[1, 1])
    with pytest.raises(ValueError, match=r"reward.parts\[1\]: HTTPReward is not available"):
        check_built_reward(mixed)
    assert check_built_reward(WeightedSum(rewards=[Colorfulness()], weights=[1])).parts
    assert hits == []
