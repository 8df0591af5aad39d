"""The example workflows in comfyui_nodes/workflows/: valid inputs and links for our nodes and the
stock ones they use, UI format consistent with the API format, trained settings, and the toy API
workflow executed through our nodes (no ComfyUI needed)."""
import json
import sys

import pytest

from comfyui_nodes.paths import resolve_path
from tests.test_comfyui_nodes import NODES, ROOT, check_outputs, parse_table

# the stock ComfyUI nodes the workflows use: (linked inputs (name, type), widget names, output types)
STOCK = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "TripleCLIPLoader": ([], ["clip_name1", "clip_name2", "clip_name3"], ["CLIP"]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], ["CONDITIONING"]),
    "EmptySD3LatentImage": ([], ["width", "height", "batch_size"], ["LATENT"]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image",
                  "LATENT")], ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], ["LATENT"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], ["IMAGE"]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "PreviewAny": ([("source", "*")], [], []),  # an output node: RETURN_TYPES = ()
}
# output nodes of ComfyUI that have no output slot
NO_OUTPUTS = {"PreviewAny", "PreviewImage", "SaveImage"}
WORKFLOWS = ROOT / "comfyui_nodes" / "workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def declaration(class_type):
    """(linked inputs [(name, type)], widget names, required names, output types) of a node class."""
    if class_type in STOCK:
        links, widgets, outputs = STOCK[class_type]
        return links, widgets, [n for n, _ in links] + widgets, outputs
    assert class_type in NODES, f"unknown node class {class_type}"
    spec = NODES[class_type].INPUT_TYPES()
    entries = {**spec["required"], **spec.get("optional", {})}
    links = [(n, d[0]) for n, d in entries.items() if isinstance(d[0], str) and d[0] not in ("INT", "FLOAT", "STRING")]
    widgets = [n for n in entries if n not in dict(links)]
    return links, widgets, list(spec["required"]), list(NODES[class_type].RETURN_TYPES)


@pytest.mark.parametrize("name", ["toy_branched_denoising", "sd35_treegrpo_lora"])
def test_workflows_are_valid_and_ui_matches_api(name):
    api = json.loads((WORKFLOWS / f"{name}_api.json").read_text())
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node_id, node in api.items():
        links, widgets, required, _ = declaration(node["class_type"])
        assert set(required) <= set(node["inputs"]) <= set(required) | {n for n, _ in links} | set(widgets)
        for input_name, value in node["inputs"].items():
            if input_name in dict(links):
                src, slot = value
                out_type = declaration(api[src]["class_type"])[3][slot]
                assert dict(links)[input_name] in (out_type, "*"), (node_id, input_name)
    assert {"id", "last_node_id", "last_link_id", "nodes", "links", "version"} <= set(ui)
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] >= max(by_id) and ui["last_link_id"] >= max(link[0] for link in ui["links"])
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == link_type
    rebuilt = {}
    for node in ui["nodes"]:
        assert {"id", "type", "pos", "size", "inputs", "outputs", "widgets_values"} <= set(node)
        if node["type"] in FRONTEND_ONLY:  # notes are not part of the API format
            assert not node["inputs"] and not node["outputs"] and isinstance(node["widgets_values"][0], str)
            continue
        links, widgets, _, outputs = declaration(node["type"])
        assert [i["name"] for i in node["inputs"]] == [n for n, _ in links]
        assert [o["type"] for o in node["outputs"]] == outputs
        values = list(node["widgets_values"])
        if "seed" in widgets:  # the frontend's control_after_generate value follows the seed
            assert values.pop(widgets.index("seed") + 1) in ("fixed", "randomize", "increment", "decrement")
        inputs = dict(zip(widgets, values, strict=True))
        for i in node["inputs"]:
            if i["link"] is not None:
                link = next(entry for entry in ui["links"] if entry[0] == i["link"])
                inputs[i["name"]] = [str(link[1]), link[2]]
        rebuilt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    assert rebuilt == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


@pytest.mark.parametrize("name", ["toy_branched_denoising", "sd35_treegrpo_lora"])
def test_ui_output_slots_are_the_node_classes_outputs(name):
    """Each treegrpo node's output slots are its RETURN_TYPES / RETURN_NAMES (list outputs drawn as
    lists), and ComfyUI's output nodes (PreviewAny, ...) have none: a slot the class lacks makes
    the frontend draw a dangling output."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in ui["nodes"]:
        slots = node["outputs"]
        if node["type"] in NO_OUTPUTS:
            assert slots == [], (node["id"], node["type"])
        elif node["type"] in NODES:
            cls = NODES[node["type"]]
            assert [(o["name"], o["type"]) for o in slots] == list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
            is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(slots))
            assert [o.get("shape") == 6 for o in slots] == list(is_list), node["id"]  # 6: LiteGraph's list shape


def test_sd35_workflow_samples_at_the_trained_settings():
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "configs" / "treegrpo_sd3_hps.py"))
    api = json.loads((WORKFLOWS / "sd35_treegrpo_lora_api.json").read_text())
    (latent,) = [n["inputs"] for n in api.values() if n["class_type"] == "EmptySD3LatentImage"]
    (sampler,) = [n["inputs"] for n in api.values() if n["class_type"] == "KSampler"]
    assert latent["width"] == latent["height"] == cfg.policy.resolution == 512
    assert sampler["cfg"] == cfg.sampler.guidance_scale == 4.5 and sampler["steps"] == 28


def test_toy_api_workflow_runs_through_our_nodes(monkeypatch):
    """Execute the toy API workflow's treegrpo nodes in dependency order (stock nodes skipped); its
    config path resolves in the default model folder, the treegrpo source tree."""
    monkeypatch.delenv("TREEGRPO_COMFY_ROOT", raising=False)
    monkeypatch.setitem(sys.modules, "folder_paths", None)
    assert resolve_path("configs/treegrpo_toy_shapes.py") == ROOT / "configs" / "treegrpo_toy_shapes.py"
    api = json.loads((WORKFLOWS / "toy_branched_denoising_api.json").read_text())
    results = {}
    while len(results) < sum(n["class_type"] in NODES for n in api.values()):
        for node_id, node in api.items():
            if node_id in results or node["class_type"] not in NODES:
                continue
            inputs = node["inputs"]
            if any(isinstance(v, list) and v[0] not in results for v in inputs.values()):
                continue
            args = {k: results[v[0]][v[1]] if isinstance(v, list) else v for k, v in inputs.items()}
            cls = NODES[node["class_type"]]
            results[node_id] = check_outputs(node["class_type"], getattr(cls(), cls.FUNCTION)(**args))
    (tree, leaves, table), (scores, score_table) = results["2"], results["6"]
    assert leaves.shape == (8, 32, 32, 3) and len(parse_table(table)) == 8 and tree.shape[0] == 1
    assert len(scores) == 8 and all(s < 0 for s in scores) and "JPEGCompressibility" in score_table


def test_comfyui_example_writes_under_work_dirs_unless_asked_for_the_docs_picture(tmp_path, monkeypatch):
    """tools/comfyui_example.py must not overwrite the tracked docs/ picture by default."""
    from tools import comfyui_example

    monkeypatch.setitem(sys.modules, "folder_paths", None)
    monkeypatch.setitem(sys.modules, "comfy", None)
    assert comfyui_example.parse_args([]).out == str(ROOT / "work_dirs" / "comfyui_example" /
                                                     "comfyui_branched_denoising.png")
    assert comfyui_example.parse_args(["--docs"]).out == str(ROOT / "docs" / "comfyui_branched_denoising.png")
    with pytest.raises(SystemExit):
        comfyui_example.parse_args(["--docs", "--out", "x.png"])
    out = comfyui_example.main(["--out", str(tmp_path / "tree.png"), "--steps", "3", "--depth", "1",
                                "--window-start", "0"])
    from PIL import Image

    assert out == tmp_path / "tree.png" and Image.open(out).size[0] > 100
