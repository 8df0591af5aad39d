"""What the ComfyUI nodes accept from a workflow, without ComfyUI: paths stay inside the model
folders (nested options, reward model arguments, the policy's model_path), nothing downloads,
HTTPReward is refused, the checkout is no model folder; the pack's registration with ComfyUI's
folder_paths and its import guard; node entry points that must never raise."""
import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import comfyui_nodes
from comfyui_nodes import logic
from comfyui_nodes.paths import (PathNotAllowedError, list_files, register_comfy_folders, resolve_config,
                                 resolve_path)
from comfyui_nodes.safety import check_reward_spec, resolve_path_values

ROOT = Path(__file__).resolve().parents[1]
NODES = comfyui_nodes.NODE_CLASS_MAPPINGS
PROMPT = "a small red circle on a blue background at the top"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model folder ($TREEGRPO_COMFY_ROOT; no ComfyUI) with a toy config, a diffusers-like folder
    with safetensors weights, one with pickle weights only and a CLIP-like folder."""
    folder = tmp_path_factory.mktemp("models")
    patch = pytest.MonkeyPatch()
    patch.setenv("TREEGRPO_COMFY_ROOT", str(folder))
    patch.setitem(sys.modules, "folder_paths", None)
    patch.setitem(sys.modules, "comfy", None)
    (folder / "toy.py").write_text(f"_base_ = ['{ROOT}/configs/treegrpo_toy_shapes.py']\n")
    (folder / "sd35.py").write_text(f"_base_ = ['{ROOT}/configs/treegrpo_sd35_jpeg.py']\n")
    for name, suffix in (("diffusers", "safetensors"), ("pickles", "bin")):
        (folder / name / "transformer").mkdir(parents=True)
        (folder / name / "model_index.json").write_text("{}")
        (folder / name / "transformer" / f"diffusion_pytorch_model.{suffix}").write_bytes(b"x")
    (folder / "clip").mkdir()
    (folder / "clip" / "config.json").write_text("{}")
    yield folder
    patch.undo()


# --- resolution -----------------------------------------------------------------------------------
def test_paths_stay_inside_the_model_folders(root):
    assert resolve_path("toy.py") == root / "toy.py"
    assert resolve_path(str(root / "clip")) == root / "clip"
    assert resolve_path("clip/../toy.py") == root / "toy.py"
    for bad in ("../x.py", "clip/../../x.py", "/etc/passwd", str(root.parent / "elsewhere")):
        with pytest.raises(PathNotAllowedError, match="outside|leaves"):
            resolve_path(bad)
    with pytest.raises(FileNotFoundError, match="not found in the treegrpo model folders"):
        resolve_path("missing.py")
    (root / "loras").mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(root / "loras" / "listed.safetensors"))
    assert "listed.safetensors" in list_files("loras")
    assert resolve_path("listed.safetensors", "loras") == root / "loras" / "listed.safetensors"


def test_only_configs_and_work_dirs_of_the_checkout_are_readable(root):
    # the checkout's configs/ keeps its usual name, and answers to names relative to it too
    assert resolve_path("configs/treegrpo_toy_shapes.py") == ROOT / "configs" / "treegrpo_toy_shapes.py"
    assert resolve_path("treegrpo_toy_shapes.py") == ROOT / "configs" / "treegrpo_toy_shapes.py"
    assert resolve_config("configs/treegrpo_toy_shapes.py") == ROOT / "configs" / "treegrpo_toy_shapes.py"
    # sources, .git, .venv and the checkout itself are not model folders: nothing there runs as a config
    for bad in (ROOT, ROOT / "treegrpo" / "registry.py", ROOT / "tools" / "train.py", ROOT / ".git" / "HEAD",
                ROOT / "pyproject.toml"):
        with pytest.raises(PathNotAllowedError, match="outside"):
            resolve_path(str(bad))
    with pytest.raises(PathNotAllowedError):
        NODES["TreegrpoLoadCheckpoint"]().load(str(ROOT / "tools" / "train.py"), "", "cpu")
    with pytest.raises(FileNotFoundError):  # configs/../tools/train.py is not under configs/
        resolve_path("configs/../tools/train.py")
    with pytest.raises(ValueError, match="not a config file"):
        resolve_config("clip/config.json/..")  # a folder
    (root / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a config file"):
        NODES["TreegrpoLoadCheckpoint"]().load("weights.safetensors", "", "cpu")


def test_nodes_refuse_paths_outside_and_non_safetensors_weights(root):
    load = NODES["TreegrpoLoadCheckpoint"]().load
    for config, checkpoint, model_path, options in (("../toy.py", "", "", ""), ("toy.py", str(ROOT / "treegrpo"), "", ""),
                                                    ("toy.py", "", "", '{"policy.weights": "/etc/passwd"}'),
                                                    ("toy.py", "", "../../", "")):
        with pytest.raises(PathNotAllowedError):
            load(config, checkpoint, "cpu", model_path, options)
    with pytest.raises(ValueError, match="may not set"):
        load("toy.py", "", "cpu", "", '{"custom_imports": {"imports": ["os"]}}')
    (root / "weights.pt").write_bytes(b"not loaded")
    with pytest.raises(PathNotAllowedError, match="safetensors files only"):
        load("toy.py", "weights.pt", "cpu")
    with pytest.raises(PathNotAllowedError, match="safetensors weights only"):
        load("toy.py", "", "cpu", model_path="pickles")
    with pytest.raises(PathNotAllowedError):
        NODES["TreegrpoScoreImages"]().score(torch.zeros(1, 8, 8, 3), PROMPT, "ToyAlignmentReward",
                                             '{"checkpoint": "../../x.safetensors"}')


# --- options and reward arguments at any depth --------------------------------------------------
def test_path_values_are_resolved_at_any_depth(root):
    values = {"policy": {"model_path": "diffusers", "lora": {"r": 4}},
              "policy.weights": ["clip", str(root / "toy.py")], "reward.clip_path": "clip", "resolution": 512,
              "reward": {"type": "WeightedSum", "weights": [0.5, 0.5], "names": ["a", "b"],
                         "rewards": [{"type": "PickScore", "model": "clip", "tokenizer": "clip"},
                                     {"type": "Colorfulness"}]}}
    out = resolve_path_values(values)
    assert out["policy"] == {"model_path": str(root / "diffusers"), "lora": {"r": 4}}
    assert out["policy.weights"] == [str(root / "clip"), str(root / "toy.py")]
    assert out["reward.clip_path"] == str(root / "clip") and out["resolution"] == 512
    assert out["reward"]["weights"] == [0.5, 0.5] and out["reward"]["names"] == ["a", "b"]  # not path strings
    clip = str(root / "clip")
    assert out["reward"]["rewards"][0] == {"type": "PickScore", "model": clip, "tokenizer": clip}
    assert values["policy"]["model_path"] == "diffusers"  # the input is not modified


@pytest.mark.parametrize("options, error, match", [
    ({"policy": {"model_path": "/etc"}}, PathNotAllowedError, "outside"),  # nested object
    ({"policy": {"lora.weights": "../../x"}}, PathNotAllowedError, "leaves"),  # dotted key inside it
    ({"policy.weights": ["clip", "/etc/passwd"]}, PathNotAllowedError, "outside"),  # list of paths
    ({"reward": {"weights": [1.0], "rewards": [{"model": "/etc"}]}}, PathNotAllowedError, "outside"),
    ({"policy.model_path": "pickles"}, PathNotAllowedError, "safetensors weights only"),  # check_model_folder
    ({"policy": {"model_path": "pickles"}}, PathNotAllowedError, "safetensors weights only"),
    ({"policy": {"model_path": "stabilityai/stable-diffusion-3.5-medium"}}, FileNotFoundError, "download nothing"),
    ({"reward": {"type": "HTTPReward", "url": "http://169.254.169.254/"}}, ValueError, "reward.type: a workflow"),
    ({"reward.type": "HTTPReward"}, ValueError, "may not set the keys"),
])
def test_options_cannot_bypass_the_checks(root, options, error, match):
    with pytest.raises(error, match=match):
        NODES["TreegrpoLoadCheckpoint"]().load("toy.py", "", "cpu", "", json.dumps(options))


def test_policy_model_path_from_the_config_is_never_downloaded(root):
    # treegrpo_sd35_jpeg.py names the hub id stabilityai/stable-diffusion-3.5-medium
    with pytest.raises(FileNotFoundError, match="stable-diffusion-3.5-medium.*download nothing.*put the model folder"):
        logic.load_pipeline("sd35.py", "", "cpu")


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("PickScore", {"model": "/etc"}, PathNotAllowedError, "outside"),
    ("PickScore", {"model": "clip"}, FileNotFoundError, "reward.tokenizer = 'laion/CLIP-ViT-H-14"),  # its default
    ("PickScore", {}, FileNotFoundError, "reward.model = 'yuvalkirstain/PickScore_v1'"),
    ("CLIPScore", {"model": "openai/clip-vit-large-patch14"}, FileNotFoundError, "download nothing"),
    ("CLIPScore", {"model": "clip", "tokenizer": "../../tok"}, PathNotAllowedError, "leaves"),
    ("Aesthetic", {"checkpoint": "clip", "clip_model": "/usr"}, PathNotAllowedError, "outside"),
    ("Aesthetic", {"checkpoint": "clip"}, FileNotFoundError, "reward.clip_model = 'openai/clip-vit-large-patch14'"),
    ("HPSv2", {"checkpoint": "clip", "clip_path": "/tmp"}, PathNotAllowedError, "outside"),
    ("ImageReward", {"checkpoint": "clip"}, FileNotFoundError, "reward.tokenizer = 'bert-base-uncased'"),
    ("HTTPReward", {"url": "http://127.0.0.1:8000/score"}, ValueError, "SSRF"),
    ("VLMJudgeReward", {"url": "http://169.254.169.254/v1/chat/completions", "model_name": "m"}, ValueError, "SSRF"),
    ("StructuredReward", {"detector": {"url": "http://10.0.0.1/detect"}}, ValueError, "SSRF|may not set"),
    ("WeightedSum", {"rewards": [{"type": "HTTPReward", "url": "http://10.0.0.1/"}], "weights": [1.0]}, ValueError,
     "SSRF"),
])
def test_reward_models_come_only_from_the_model_folders(root, name, kwargs, error, match):
    with pytest.raises(error, match=match):
        NODES["TreegrpoScoreImages"]().score(torch.zeros(1, 8, 8, 3), PROMPT, name, json.dumps(kwargs))


def test_reward_spec_defaults_are_written_out_and_resolved(root):
    spec = check_reward_spec({"type": "WeightedSum", "weights": [1.0, 2.0],
                              "rewards": [{"type": "CLIPScore", "model": "clip"},
                                          {"type": "PickScore", "model": "clip", "tokenizer": str(root / "clip")}]})
    clip = str(root / "clip")
    assert spec["rewards"] == [{"type": "CLIPScore", "model": clip},
                               {"type": "PickScore", "model": clip, "tokenizer": clip}]
    # a pipeline config's reward is checked too ('config' reward), including HTTPReward inside it
    with pytest.raises(ValueError, match="SSRF"):
        logic.build_reward("config", "", {"type": "WeightedSum", "weights": [1.0],
                                          "rewards": [{"type": "HTTPReward", "url": "http://x/"}]})
    # ... and a wrapper's inner reward (FrameAveragedReward.reward), found on the built object
    with pytest.raises(ValueError, match=r"reward\.reward: HTTPReward .*SSRF"):
        logic.build_reward("config", "", {"type": "FrameAveragedReward",
                                          "reward": {"type": "HTTPReward", "url": "http://x/"}})
    with pytest.raises(FileNotFoundError, match="reward.checkpoint = 'weights/HPS_v2.1_compressed.pt'"):
        logic.build_reward("config", "", {"type": "HPSv2", "checkpoint": "weights/HPS_v2.1_compressed.pt"})


def test_every_shipped_reward_with_a_url_argument_is_refused_as_a_network_reward():
    """A reward that takes a URL (or builds a detector / engine that may) must say so with
    ``sends_requests``: the pack's SSRF guard is by class, so a new one must not slip through."""
    import inspect

    from comfyui_nodes.safety import is_network_reward, pack_allows
    from treegrpo.registry import REWARDS, registered_names

    network = set()
    for name in registered_names(REWARDS):
        cls = REWARDS.get(name)
        params = set(inspect.signature(cls.__init__).parameters)
        if params & {"url", "detector", "base_url", "endpoint"}:
            assert is_network_reward(cls) and not pack_allows(cls), name
            network.add(name)
    assert {"HTTPReward", "VLMJudgeReward", "StructuredReward"} <= network


def test_http_reward_is_not_offered_and_reward_names_never_raise(root, monkeypatch, caplog):
    assert "HTTPReward" not in logic.reward_names() and "ToyAlignmentReward" in logic.reward_names()
    assert "VLMJudgeReward" not in logic.reward_names()
    assert "HTTPReward" not in NODES["TreegrpoScoreImages"].INPUT_TYPES()["required"]["reward"][0]
    import treegrpo.registry

    def broken(registry):
        raise RuntimeError("a reward module failed to import")

    monkeypatch.setattr(treegrpo.registry, "registered_names", broken)
    with caplog.at_level(logging.WARNING):
        names = logic.reward_names()
    assert names == list(logic.FALLBACK_REWARDS) and "a reward module failed to import" in caplog.text
    for cls in NODES.values():
        cls.INPUT_TYPES()  # ComfyUI's /object_info keeps working
    assert NODES["TreegrpoScoreImages"].INPUT_TYPES()["required"]["reward"][1] == {"default": "ToyAlignmentReward"}


def test_is_changed_skips_linked_inputs(root):
    is_changed = NODES["TreegrpoLoadCheckpoint"].IS_CHANGED
    assert is_changed(None, None, "cpu") == ""  # ComfyUI passes None for inputs fed by a link
    toy = root / "toy.py"
    assert is_changed("toy.py", None, "cpu") == f"{toy}@{toy.stat().st_mtime_ns}"
    assert is_changed(None, "toy.py", "cpu", None, None) == is_changed("toy.py", "", "cpu")


# --- registration with ComfyUI and the import guard ------------------------------------------------
def fake_folder_paths(monkeypatch, tmp_path, is_default=True):
    """A fake ComfyUI ``folder_paths`` (``add_model_folder_path`` with or without is_default)."""
    folders = {"loras": [str(tmp_path / "loras")]}
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path)

    def add(name, path, is_default=False):
        folders.setdefault(name, []).insert(0 if is_default else len(folders[name]), path)

    fake.add_model_folder_path = add if is_default else (lambda name, path: add(name, path))
    fake.get_folder_paths = lambda name: list(folders[name])
    fake.get_filename_list = lambda name: ["a.safetensors", "b.ckpt"]
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return folders


def load_like_comfyui(name, folder=ROOT / "comfyui_nodes"):
    """Import the pack as ComfyUI's custom-node loader does: from its folder, under ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module, before = importlib.util.module_from_spec(spec), dict(sys.modules)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for key in set(sys.modules) - set(before):
            del sys.modules[key]
        sys.modules.update(before)
    return module


def test_pack_registers_its_folders_with_comfyui(root, tmp_path, monkeypatch):
    folders = fake_folder_paths(monkeypatch, tmp_path)
    pack = load_like_comfyui("treegrpo_nodes")  # models/treegrpo first, then $TREEGRPO_COMFY_ROOT, configs, work_dirs
    assert set(pack.NODE_CLASS_MAPPINGS) == set(NODES)
    wanted = [str(tmp_path / "treegrpo"), str(root), str(ROOT / "configs"), str(ROOT / "work_dirs")]
    assert folders["treegrpo"] == wanted and str(ROOT) not in folders["treegrpo"]
    assert register_comfy_folders() == wanted  # idempotent
    (tmp_path / "treegrpo").mkdir()
    (tmp_path / "treegrpo" / "mine.py").write_text("x = 1\n")
    assert resolve_path("mine.py") == tmp_path / "treegrpo" / "mine.py"
    assert resolve_path("toy.py") == root / "toy.py"
    assert resolve_path("configs/treegrpo_toy_shapes.py") == ROOT / "configs" / "treegrpo_toy_shapes.py"
    with pytest.raises(PathNotAllowedError):
        resolve_path(str(tmp_path / "loras" / "a.safetensors"))  # a loras file is not a treegrpo path
    with pytest.raises(PathNotAllowedError):
        resolve_path(str(ROOT / "tools" / "train.py"))
    assert list_files("loras") == ["a.safetensors"]


def test_registration_without_is_default(root, tmp_path, monkeypatch):
    folders = fake_folder_paths(monkeypatch, tmp_path, is_default=False)  # ComfyUI before September 2024
    folders["treegrpo"] = ["/extra/treegrpo"]  # e.g. from extra_model_paths.yaml
    assert register_comfy_folders() == ["/extra/treegrpo", str(tmp_path / "treegrpo"), str(root),
                                        str(ROOT / "configs"), str(ROOT / "work_dirs")]


def test_pack_imports_without_treegrpo_and_says_what_is_missing():
    code = ("import sys; sys.modules['treegrpo'] = None\n"
            "import comfyui_nodes as pack\n"
            "specs = [c.INPUT_TYPES() for c in pack.NODE_CLASS_MAPPINGS.values()]\n"
            "try:\n    pack.NODE_CLASS_MAPPINGS['TreegrpoLoadCheckpoint']().load('x.py', '', 'cpu')\n"
            "except RuntimeError as e:\n    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERROR the treegrpo nodes need the treegrpo package" in out.stdout and "pip install" in out.stdout


def test_pack_folder_named_treegrpo_is_refused_under_any_module_name(tmp_path, monkeypatch):
    fake_folder_paths(monkeypatch, tmp_path)
    ignore = shutil.ignore_patterns("__pycache__", "workflows")
    for folder_name in ("treegrpo", "treegrpo_nodes"):
        shutil.copytree(ROOT / "comfyui_nodes", tmp_path / "custom_nodes" / folder_name, ignore=ignore)
    bad, good = tmp_path / "custom_nodes" / "treegrpo", tmp_path / "custom_nodes" / "treegrpo_nodes"
    for module_name in ("treegrpo", str(bad).replace(".", "_x_")):  # old and new ComfyUI module names
        with pytest.raises(ImportError, match="name its folder"):
            load_like_comfyui(module_name, bad)
    assert set(load_like_comfyui(str(good).replace(".", "_x_"), good).NODE_CLASS_MAPPINGS) == set(NODES)


def test_pickle_reward_checkpoints_are_refused(tmp_path, monkeypatch):
    from comfyui_nodes.safety import safe_weights

    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"not really a pickle")
    (tmp_path / "mlp.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors files only"):
        safe_weights(str(tmp_path / "HPS_v2.1_compressed.pt"))
    assert safe_weights(str(tmp_path / "mlp.safetensors")) == str(tmp_path / "mlp.safetensors")
