"""The ComfyUI node pack without ComfyUI: node declarations, every node's FUNCTION on real inputs
(a toy run trained here, the tiny random SD3), the LoRA node and ComfyUI's device, memory and
progress functions against a fake ``comfy``, and the example workflows (path safety:
test_comfyui_paths.py)."""
import contextlib
import inspect
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfyui_nodes
from comfyui_nodes import logic
from comfyui_nodes.paths import PathNotAllowedError

ROOT = Path(__file__).resolve().parents[1]
NODES = comfyui_nodes.NODE_CLASS_MAPPINGS
PROMPT = "a small red circle on a blue background at the top"
COMFY_TYPES = {"IMAGE", "MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "STRING", "INT", "FLOAT", "BOOLEAN", "*"}
OUR_TYPES = {"TREEGRPO_PIPELINE"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model folder ($TREEGRPO_COMFY_ROOT) holding a 2-iteration toy run and the tiny SD3; no ComfyUI."""
    from tools.make_tiny_models import main as make_tiny
    from tools.train import main as train_main

    folder = tmp_path_factory.mktemp("models")
    patch = pytest.MonkeyPatch()
    patch.setenv("TREEGRPO_COMFY_ROOT", str(folder))
    patch.setitem(sys.modules, "folder_paths", None)
    patch.setitem(sys.modules, "comfy", None)
    (folder / "toy.py").write_text(f"_base_ = ['{ROOT}/configs/treegrpo_toy_shapes.py']\n"
                                   "hooks = [dict(type='CheckpointHook', interval=2, max_keep=1)]\n")
    train_main([str(folder / "toy.py"), "--work-dir", str(folder / "runs" / "toy"), "--cfg-options",
                "max_iters=2", "prompts_per_iter=2", "sampler.num_steps=4", "schedule.depth=2",
                "schedule.start_range=(0,1)"])
    make_tiny(["--out", str(folder / "tiny"), "--models", "sd3"])
    (folder / "sd35.py").write_text(f"_base_ = ['{ROOT}/configs/treegrpo_sd35_jpeg.py']\n")
    yield folder
    patch.undo()


@pytest.fixture(scope="module")
def toy(root):
    return check_outputs("TreegrpoLoadCheckpoint", NODES["TreegrpoLoadCheckpoint"]().load("toy.py", "runs/toy", "cpu"))[0]


SD3_OPTIONS = json.dumps({"policy.resolution": 32, "policy.dtype": "float32", "policy.lora.r": 4,
                          "policy.lora.alpha": 8, "sampler.guidance_scale": 2.0})


def load_sd3(checkpoint=""):
    """The tiny random SD3 under the SD3.5 JPEG config (LoRA r=4, alpha=8: scale 2; CFG 2)."""
    return logic.load_pipeline("sd35.py", checkpoint, "cpu", "tiny/sd3", SD3_OPTIONS)


def fake_comfy(monkeypatch, calls, device=None):
    """Fake comfy.utils (load_torch_file, ProgressBar), comfy.sd (load_lora_for_models) and
    comfy.model_management (cancel check: raises once ("cancel",) is in ``calls``) that record calls;
    with ``device``, also get_torch_device (returns it), unload_all_models, soft_empty_cache and
    comfy.utils.comfy_tqdm."""
    names = ("comfy", "comfy.utils", "comfy.sd", "comfy.model_management")
    comfy, utils, sd, management = (types.ModuleType(n) for n in names)
    comfy.utils, comfy.sd, comfy.model_management = utils, sd, management
    if device is not None:
        management.get_torch_device = lambda: calls.append(("device",)) or torch.device(device)
        management.unload_all_models = lambda: calls.append(("unload",))
        management.soft_empty_cache = lambda force=False: calls.append(("empty_cache",))

        @contextlib.contextmanager
        def comfy_tqdm():
            calls.append(("tqdm", "enter"))
            yield
            calls.append(("tqdm", "exit"))

        utils.comfy_tqdm = comfy_tqdm

    def throw_exception_if_processing_interrupted():
        if ("cancel",) in calls:
            raise InterruptedError("cancelled")

    utils.load_torch_file = lambda path, safe_load=False, device=None: (
        calls.append(("load", path, safe_load)) or load_file(path))
    utils.ProgressBar = lambda total: calls.append(("bar", total)) or types.SimpleNamespace(
        update_absolute=lambda value, total=None, preview=None: calls.append(("progress", value, total)))
    sd.load_lora_for_models = lambda model, clip, lora, strength, strength_clip: calls.append(
        ("apply", model, clip, lora, strength, strength_clip)) or (("patched", model), clip)
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    for name, module in zip(names, (comfy, utils, sd, management)):
        monkeypatch.setitem(sys.modules, name, module)


def check_outputs(class_type, outputs):
    """A FUNCTION result against the class's RETURN_TYPES (IMAGE: float [B, H, W, 3] in [0, 1])."""
    cls = NODES[class_type]
    assert isinstance(outputs, tuple) and len(outputs) == len(cls.RETURN_TYPES)
    for value, kind, is_list in zip(outputs, cls.RETURN_TYPES, getattr(cls, "OUTPUT_IS_LIST", (False,) * 9)):
        for item in (value if is_list else [value]):
            if kind == "IMAGE":
                assert item.dim() == 4 and item.shape[-1] == 3 and item.dtype == torch.float32
                assert 0.0 <= item.min() and item.max() <= 1.0
            elif kind in ("STRING", "FLOAT"):
                assert isinstance(item, {"STRING": str, "FLOAT": float}[kind])
            elif kind == "TREEGRPO_PIPELINE":
                assert isinstance(item, logic.TreegrpoPipeline)
    return outputs


# --- declarations -----------------------------------------------------------------------------
def test_pack_declares_standard_nodes():
    assert set(NODES) == set(comfyui_nodes.NODE_DISPLAY_NAME_MAPPINGS) == {
        "TreegrpoLoadCheckpoint", "TreegrpoApplyLoRA", "TreegrpoBranchedDenoising", "TreegrpoScoreImages"}
    for cls in NODES.values():
        assert isinstance(inspect.getattr_static(cls, "INPUT_TYPES"), classmethod)
        assert cls.CATEGORY == "treegrpo" and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert set(cls.RETURN_TYPES) <= COMFY_TYPES | OUR_TYPES
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"} and spec["required"]
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert set(spec["required"]) | set(spec.get("optional", {})) == set(params) - {"self"}
        assert all(params[name].default is not inspect.Parameter.empty for name in spec.get("optional", {}))
        for name, decl in {**spec["required"], **spec.get("optional", {})}.items():
            kind, opts = decl[0], (decl[1] if len(decl) > 1 else {})
            if isinstance(kind, list):  # combo
                assert all(isinstance(v, str) for v in kind)
                assert "default" not in opts or opts["default"] in kind, name
            elif kind in ("INT", "FLOAT"):
                number = int if kind == "INT" else float
                assert isinstance(opts["default"], number) and opts["min"] <= opts["default"] <= opts["max"], name
                assert opts.get("step", 1) > 0
            elif kind == "STRING":
                assert isinstance(opts["default"], str)
            else:
                assert kind in COMFY_TYPES | OUR_TYPES, (name, kind)
    score = NODES["TreegrpoScoreImages"]
    assert score.OUTPUT_IS_LIST == (True, False)
    assert "ToyAlignmentReward" in score.INPUT_TYPES()["required"]["reward"][0]
    assert NODES["TreegrpoBranchedDenoising"].INPUT_TYPES()["optional"]["reward"][0][0] == "config"


# --- load and branched denoising on the toy world ----------------------------------------------
def test_load_checkpoint_restores_the_trained_toy_weights(root, toy):
    saved = load_file(str(root / "runs" / "toy" / "checkpoints" / "iter_2" / "model.safetensors"))
    base = logic.load_pipeline("toy.py", "", "cpu").policy.trainable_state_dict()
    loaded = toy.policy.trainable_state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(not torch.equal(base[k], saved[k]) for k in saved)
    from_run = logic.load_pipeline("", "runs/toy", "cpu")  # config: the run's own config.py
    assert all(torch.equal(from_run.policy.trainable_state_dict()[k], saved[k]) for k in saved)
    before = logic.checkpoint_fingerprint("toy.py", "runs/toy")
    weights = root / "runs" / "toy" / "checkpoints" / "iter_2" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert logic.checkpoint_fingerprint("toy.py", "runs/toy") != before  # ComfyUI's IS_CHANGED
    assert NODES["TreegrpoLoadCheckpoint"].IS_CHANGED("toy.py", "runs/toy", "cpu") == logic.checkpoint_fingerprint("toy.py", "runs/toy")


def parse_table(table: str) -> list[tuple[str, float, float]]:
    rows = re.findall(r"^\d+\s+\d+\s+([0-9-]+)\s+(-?[0-9.]+)\s+([+-][0-9.]+)$", table, re.M)
    return [(path, float(r), float(a)) for path, r, a in rows]


def test_branched_denoising_returns_tree_leaves_and_table(toy, monkeypatch):
    calls = []
    fake_comfy(monkeypatch, calls)
    node = NODES["TreegrpoBranchedDenoising"]()
    tree, leaves, table = check_outputs("TreegrpoBranchedDenoising", node.run(toy, PROMPT, 7, 2, 3, 1, 6, 0.7))
    assert tree.shape[0] == 1 and tree.shape[1] > 100 and leaves.shape == (8, 32, 32, 3)
    rows = parse_table(table)
    assert [p for p, _, _ in rows] == [f"{a}-{b}-{c}" for a in "01" for b in "01" for c in "01"]
    rewards, advantages = torch.tensor([r for _, r, _ in rows]), torch.tensor([a for _, _, a in rows])
    expected_adv = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
    assert torch.allclose(advantages, expected_adv, atol=2e-3)  # leaf advantage = normalised reward
    scores, _ = NODES["TreegrpoScoreImages"]().score(leaves, PROMPT, "ToyAlignmentReward")
    assert torch.allclose(torch.tensor(scores), rewards, atol=1e-4)  # the table's rewards are the leaves' 
    # progress: one update per model forward up to the NFE floor + previews (exact), then done
    total = logic.expected_forward_rows(6, 1, 3, 2, 1.0) + 1
    assert total == (1 + (1 + 2 + 4) + 8 * 2) + 15 + 1
    progress = [c[1] for c in calls if c[0] == "progress"]
    assert calls[0] == ("bar", total) and progress[-1] == total and progress[-2] == total - 1
    assert progress == sorted(progress)
    again = node.run(toy, PROMPT, 7, 2, 3, 1, 6, 0.7)
    other = node.run(toy, PROMPT, 8, 2, 3, 1, 6, 0.7)
    assert torch.equal(again[1], leaves) and not torch.equal(other[1], leaves)


def test_branched_denoising_checks_its_window(toy):
    run = NODES["TreegrpoBranchedDenoising"]().run
    with pytest.raises(ValueError, match="must fit in steps=4"):
        run(toy, PROMPT, 0, 2, 3, 2, 4, 0.7)
    with pytest.raises(ValueError, match="more than 512"):
        run(toy, PROMPT, 0, 8, 4, 0, 10, 0.7)
    with pytest.raises(ValueError, match="unknown reward 'Nope'"):
        run(toy, PROMPT, 0, 2, 1, 0, 3, 0.7, reward="Nope")


def test_leaf_paths_and_expected_rows_by_hand():
    assert logic.leaf_paths([-1, 0, 0, 1, 1, 2, 2], [3, 4, 5, 6]) == ["0-0", "0-1", "1-0", "1-1"]
    # 10 steps, window 2..4, k=2: p=2, window 1+2+4, 8 leaves x 5 suffix steps; 15 previews; CFG x2
    assert logic.expected_forward_rows(10, 2, 3, 2, 4.5) == 2 * (2 + 7 + 40 + 15)


# --- score images -----------------------------------------------------------------------------
def test_score_images_on_comfy_images_by_hand():
    images = torch.zeros(3, 4, 6, 3)
    images[0, ..., 0] = 1.0  # pure red: 0.3 * sqrt(255^2 + 127.5^2)
    images[1] = 0.5  # grey: 0
    images[2, :, :3, 0], images[2, :, 3:, 1] = 1.0, 1.0  # red | green: std_rg 255 + 0.3 * 127.5
    scores, table = check_outputs("TreegrpoScoreImages", NODES["TreegrpoScoreImages"]().score(images, "x", "Colorfulness"))
    assert scores == pytest.approx([0.3 * (255 ** 2 + 127.5 ** 2) ** 0.5, 0.0, 255 + 0.3 * 127.5], abs=1e-3)
    assert "reward Colorfulness" in table and len(table.splitlines()) == 6
    rgba = torch.cat([images, torch.ones(3, 4, 6, 1)], dim=-1)
    assert NODES["TreegrpoScoreImages"]().score(rgba, "x", "Colorfulness")[0] == pytest.approx(scores)
    grey = NODES["TreegrpoScoreImages"]().score(torch.full((2, 4, 4, 1), 0.3), "x", "Colorfulness")[0]
    assert grey == pytest.approx([0.0, 0.0], abs=1e-4)
    for bad_images, reward, kwargs, match in ((torch.zeros(3, 4, 4), "Colorfulness", "", r"\[B, H, W, C\]"),
                                              (images, "JPEGCompressibility", "[90]", "JSON object"),
                                              (images, "JPEGCompressibility", '{"quality": 0}', "quality")):
        with pytest.raises(ValueError, match=match):
            NODES["TreegrpoScoreImages"]().score(bad_images, "x", reward, kwargs)


# --- inside ComfyUI: its device, freeing its models, progress of loads ------------------------------
def test_pick_device_follows_comfyui(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "comfy", None)
    assert logic.pick_device("auto") == "cuda" and logic.pick_device("cpu") == "cpu"  # outside ComfyUI
    calls = []
    fake_comfy(monkeypatch, calls, device="cpu")  # e.g. ComfyUI started with --cpu
    assert logic.pick_device("auto") == "cpu" and calls == [("device",)]
    assert logic.pick_device("cuda") == "cuda"
    with pytest.raises(ValueError, match="device must be one of"):
        logic.pick_device("tpu")


def test_cuda_without_a_gpu_is_refused_before_anything_loads(root, monkeypatch):
    import treegrpo.inference

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loads = []
    monkeypatch.setattr(treegrpo.inference, "load_policy", lambda *args: loads.append(args))
    monkeypatch.setattr(treegrpo.inference, "load_config", lambda *args: loads.append(args))
    with pytest.raises(RuntimeError, match="device is 'cuda' but PyTorch sees no CUDA GPU.*set device to 'auto'"):
        NODES["TreegrpoLoadCheckpoint"]().load("toy.py", "runs/toy", "cuda")
    assert loads == []


def test_load_inside_comfyui_frees_its_models_then_loads_under_comfy_tqdm(root, monkeypatch):
    import treegrpo.inference

    calls, load_policy = [], treegrpo.inference.load_policy
    fake_comfy(monkeypatch, calls, device="cpu")
    def recording_load_policy(cfg, checkpoint, device):
        calls.append(("load_policy", device))
        return load_policy(cfg, checkpoint, device)

    monkeypatch.setattr(treegrpo.inference, "load_policy", recording_load_policy)
    pipeline = logic.load_pipeline("toy.py", "runs/toy", "auto")
    assert calls == [("device",), ("unload",), ("empty_cache",), ("tqdm", "enter"), ("load_policy", "cpu"),
                     ("tqdm", "exit")]
    assert isinstance(pipeline, logic.TreegrpoPipeline)


def test_scoring_runs_on_comfyui_device_and_loads_rewards_under_comfy_tqdm(monkeypatch):
    from treegrpo.rewards.image_stats import Colorfulness

    calls, seen = [], []
    fake_comfy(monkeypatch, calls, device="meta")  # IMAGE arrives on the CPU; the reward gets ComfyUI's device
    monkeypatch.setattr(Colorfulness, "load", lambda self: calls.append(("load",)) or self)
    monkeypatch.setattr(Colorfulness, "__call__", lambda self, images, prompts: seen.append(images.device.type)
                        or torch.arange(images.shape[0], dtype=torch.float32))
    logic._REWARD_CACHE.clear()
    scores, _ = NODES["TreegrpoScoreImages"]().score(torch.zeros(2, 4, 4, 3), "x", "Colorfulness")
    assert seen == ["meta"] and scores == [0.0, 1.0]
    assert calls == [("tqdm", "enter"), ("load",), ("tqdm", "exit"), ("device",)]
    NODES["TreegrpoScoreImages"]().score(torch.zeros(2, 4, 4, 3), "x", "Colorfulness")
    assert calls.count(("load",)) == 1  # the built reward is kept
    logic._REWARD_CACHE.clear()


# --- tiny SD3: LoRA files in the three layouts, branched denoising with CFG ---------------------
def test_sd3_pipeline_loads_lora_files_in_every_layout(root):
    policy = load_sd3().policy
    gen = torch.Generator().manual_seed(0)
    trained = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in policy.trainable_state_dict().items()}
    modules = sorted({k.split(".lora_A.")[0] for k in trained if ".lora_A." in k})
    assert modules and all(k.endswith(".default.weight") for k in trained)
    # diffusers layout: alpha in the metadata, 2 at rank 4 (scale 0.5) against the policy's
    # 8 / 4 = 2: up x 4; without metadata alpha = r (scale 1): up x 2
    diffusers = {f"transformer.{k.replace('.default', '')}": v * (4.0 if ".lora_B." in k else 1.0)
                 for k, v in trained.items()}
    alpha_2 = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 2})}
    no_metadata = {k: v / 2.0 if ".lora_B." in k else v for k, v in diffusers.items()}
    # ComfyUI layout with alpha 2 at rank 4 (scale 0.5) against the policy's 8 / 4 = 2: up x 4
    kohya = {}
    for m in modules:
        flat = "lora_transformer_" + m.replace(".", "_")
        kohya[f"{flat}.lora_down.weight"] = trained[f"{m}.lora_A.default.weight"]
        kohya[f"{flat}.lora_up.weight"] = trained[f"{m}.lora_B.default.weight"] * 4.0
        kohya[f"{flat}.alpha"] = torch.tensor(2.0)
    for name, state, metadata in (("peft", trained, None), ("diffusers", diffusers, alpha_2),
                                  ("diffusers_no_metadata", no_metadata, None), ("kohya", kohya, None)):
        save_file(state, str(root / f"{name}.safetensors"), metadata=metadata)
        loaded = load_sd3(f"{name}.safetensors").policy.trainable_state_dict()
        assert all(torch.allclose(loaded[k], trained[k], atol=1e-6) for k in trained), name
    save_file({**kohya, "lora_transformer_nowhere.alpha": torch.tensor(1.0)}, str(root / "bad.safetensors"))
    with pytest.raises(KeyError, match="nowhere"):
        load_sd3("bad.safetensors")
    save_file({"unet." + k.split(".", 1)[1]: v for k, v in diffusers.items()}, str(root / "unet.safetensors"))
    with pytest.raises(KeyError, match="adapts the 'unet' component"):
        load_sd3("unet.safetensors")


def test_sd3_branched_denoising_with_cfg(root, monkeypatch):
    calls = []
    fake_comfy(monkeypatch, calls)
    pipeline = load_sd3()
    tree, leaves, table = check_outputs("TreegrpoBranchedDenoising",
                                        NODES["TreegrpoBranchedDenoising"]().run(pipeline, "a fox", 0, 2, 1, 1, 3, 1.0))
    assert leaves.shape == (2, 32, 32, 3) and tree.shape[0] == 1 and tree.shape[-1] == 3
    assert "reward JPEGCompressibility" in table and len(parse_table(table)) == 2
    total = 2 * (1 + 1 + 2 * 1 + 3) + 1  # CFG doubles: prefix 1, window 1, 2 leaves x 1 suffix, 3 previews
    progress = [c[1] for c in calls if c[0] == "progress"]
    assert progress[-2:] == [total - 1, total]
    calls.append(("cancel",))  # ComfyUI's cancel button stops the sampling; the policy is restored
    with pytest.raises(InterruptedError):
        NODES["TreegrpoBranchedDenoising"]().run(pipeline, "a fox", 0, 2, 1, 1, 3, 1.0)
    assert "model_output" not in vars(pipeline.policy)


# --- Apply LoRA to ComfyUI's MODEL ----------------------------------------------------------------
def test_apply_lora_uses_comfyui_loader(root, monkeypatch):
    (root / "loras").mkdir(exist_ok=True)
    lora = {"lora_transformer_x_to_q.lora_down.weight": torch.ones(2, 3),
            "lora_transformer_x_to_q.lora_up.weight": torch.ones(3, 2), "lora_transformer_x_to_q.alpha": torch.tensor(2.0)}
    save_file(lora, str(root / "loras" / "tuned.safetensors"))
    apply = NODES["TreegrpoApplyLoRA"]().apply
    with pytest.raises(RuntimeError, match="needs ComfyUI"):
        apply("MODEL", "tuned.safetensors", 1.0)
    calls = []
    fake_comfy(monkeypatch, calls)
    model = object()
    (patched,) = check_outputs("TreegrpoApplyLoRA", apply(model, "tuned.safetensors", 0.8))
    assert patched == ("patched", model)
    assert calls[0] == ("load", str(root / "loras" / "tuned.safetensors"), True)
    _, got_model, clip, got_lora, strength, strength_clip = calls[1]
    assert got_model is model and clip is None and (strength, strength_clip) == (0.8, 0)
    assert set(got_lora) == set(lora) and all(torch.equal(got_lora[k], lora[k]) for k in lora)
    assert apply(model, "tuned.safetensors", 0.0) == (model,) and len(calls) == 2
    for bad in ("../toy.py", str(root / "toy.py")):
        with pytest.raises(PathNotAllowedError):
            apply(model, bad, 1.0)
    (root / "loras" / "old.ckpt").write_bytes(b"pickle")
    with pytest.raises(PathNotAllowedError, match="safetensors files only"):
        apply(model, "old.ckpt", 1.0)
    save_file({"blocks.0.to_q.lora_A.default.weight": torch.ones(2, 3)}, str(root / "loras" / "raw.safetensors"))
    with pytest.raises(ValueError, match="export_lora"):
        apply(model, "raw.safetensors", 1.0)


def test_apply_lora_converts_the_diffusers_layout_a_run_writes(root, monkeypatch):
    """ComfyUI reads a diffusers file's keys but not the alpha in its metadata (scale 1): the node
    hands it the ComfyUI layout with .alpha, so the applied update is the trained (alpha / r) B A."""
    from treegrpo.lora_export import LoraModule, diffusers_state

    (root / "loras").mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    modules = {name: LoraModule(down=torch.randn(4, 8, generator=gen), up=torch.randn(8, 4, generator=gen), alpha=8.0)
               for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_out.0")}
    state, metadata = diffusers_state(modules, "transformer")  # as checkpoints/iter_<n>/lora/ holds it
    save_file(state, str(root / "loras" / "run_lora.safetensors"), metadata=metadata)
    calls = []
    fake_comfy(monkeypatch, calls)
    NODES["TreegrpoApplyLoRA"]().apply(object(), "run_lora.safetensors", 1.0)
    handed = calls[-1][3]
    for name, module in modules.items():
        key = "lora_transformer_" + name.replace(".", "_")
        down, up, alpha = handed[f"{key}.lora_down.weight"], handed[f"{key}.lora_up.weight"], handed[f"{key}.alpha"]
        comfy_delta = alpha.item() / down.shape[0] * (up @ down)  # what ComfyUI's calculate_weight adds
        assert torch.allclose(comfy_delta, 2.0 * module.up @ module.down)  # alpha 8 / r 4
    assert len(handed) == 3 * len(modules)

    mixed = {"unet.a.lora_A.weight": torch.ones(2, 3), "unet.a.lora_B.weight": torch.ones(3, 2),
             "text_encoder.b.lora_A.weight": torch.ones(2, 3), "text_encoder.b.lora_B.weight": torch.ones(3, 2)}
    save_file(mixed, str(root / "loras" / "mixed.safetensors"))
    with pytest.raises(ValueError, match=r"mixed.safetensors is a diffusers-layout LoRA.*python tools/export_lora.py "
                                         r"work_dirs/<config>/<stamp> --out ComfyUI/models/loras/mixed_comfyui"):
        NODES["TreegrpoApplyLoRA"]().apply(object(), "mixed.safetensors", 1.0)


# --- example workflows --------------------------------------------------------------------------
