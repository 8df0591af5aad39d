"""FluxKontextPolicy (image editing) on the tiny FLUX.1 Kontext pipeline, and the input-image checks."""
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.make_tiny_models import main as make_tiny
from tools.train import main as train_main
from treegrpo.image_inputs import ImageInputError, load_image, resolve_image_path
from treegrpo.kernels import FlowMatchingKernel
from treegrpo.policies.flux import pack_latents, unpack_latents
from treegrpo.policies.flux_kontext import FluxKontextPolicy, condition_position_ids
from treegrpo.samplers import FlatSampler, TreeSampler
from treegrpo.samplers.common import ode_integrate
from treegrpo.schedules import BranchPlan

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "_base_"
SEQ = 16


def write_png(path: Path, seed: int, size: int = 32) -> Path:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height (no pixel data): what a decompression bomb shows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def tiny_kontext(tmp_path_factory):
    return make_tiny(["--out", str(tmp_path_factory.mktemp("tiny")), "--models", "flux_kontext"])["flux_kontext"]


@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory):
    """A prompt folder: two input images and a jsonl prompt file naming them."""
    folder = tmp_path_factory.mktemp("edit")
    (folder / "in").mkdir()
    write_png(folder / "in" / "a.png", 0)
    write_png(folder / "in" / "b.png", 1)
    rows = [{"prompt": "make it red", "image": "in/a.png"}, {"prompt": "add a hat", "image": "in/b.png"}]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def policy(tiny_kontext, edit_folder):
    return FluxKontextPolicy(str(tiny_kontext), resolution=32, max_sequence_length=SEQ, image_root=str(edit_folder))


def test_condition_ids_by_hand_and_as_the_pipeline():
    from diffusers import FluxKontextPipeline

    ids = condition_position_ids(4, 2)
    assert ids.tolist() == [[1, 0, 0], [1, 1, 0]]  # 2x1 patches: (1, row, column)
    expected = FluxKontextPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    expected[..., 0] = 1
    torch.testing.assert_close(condition_position_ids(8, 8), expected, rtol=0, atol=0)


def test_encode_caches_images_and_needs_records(policy):
    assert type(policy.pipe).__name__ == "FluxKontextPipeline" and policy.reads_records
    records = [{"image": "in/a.png"}, {"image": "in/b.png"}, {"image": "in/a.png"}]
    cond = policy.encode(["make it red", "add a hat", "again"], records)
    assert cond["image_tokens"].shape == (3, 64, 64)  # 32px -> 16x16 latents -> 8x8 patches of 16*4
    assert cond["prompt_embeds"].shape == (3, SEQ, 32) and cond["pooled"].shape == (3, 32)
    assert torch.equal(cond["image_tokens"][0], cond["image_tokens"][2])
    assert not torch.equal(cond["image_tokens"][0], cond["image_tokens"][1])
    assert policy.image_cache.encoded == 2  # each file through the VAE once
    policy.encode(["make it red"], [{"image": "in/a.png"}])
    assert policy.image_cache.encoded == 2
    with pytest.raises(ValueError, match="one prompt record with an 'image' path per prompt"):
        policy.encode(["make it red"], None)
    with pytest.raises(ValueError, match=r"prompt record 0 \('x'\) has no 'image' field"):
        policy.encode(["x"], [{"colour": "red"}])
    x = torch.zeros(1, *policy.latent_shape)
    with pytest.raises(ValueError, match="policy.encode"):
        policy.model_output(x, torch.tensor([0.5]), policy.encode_prompts(["x"]))
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 4"):  # tiny VAE: 2x
        FluxKontextPolicy(policy.model_path, resolution=32, image_size=30)


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_ode_path_equals_the_pipeline(policy, edit_folder, true_cfg):
    """Same noise, prompt and input image: our ODE run reproduces FluxKontextPipeline's latents
    (with true CFG too: the negative prompt keeps the input image)."""
    steps = 3
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    image = Image.open(edit_folder / "in" / "a.png").convert("RGB")
    extra = dict(true_cfg_scale=true_cfg, negative_prompt="") if true_cfg > 1 else {}
    with torch.no_grad():
        reference = policy.pipe(image=image, prompt="make it red", num_inference_steps=steps, height=32,
                                width=32, max_area=32 * 32, _auto_resize=False, guidance_scale=3.5,
                                max_sequence_length=SEQ, output_type="latent", latents=pack_latents(x),
                                **extra).images
        cond = policy.encode(["make it red"], [{"image": "in/a.png"}])
        ours = ode_integrate(policy, FlowMatchingKernel(0.0), x, cond, policy.noise_levels(steps),
                             range(steps), true_cfg)
    torch.testing.assert_close(ours, unpack_latents(reference, 16, 16), rtol=1e-5, atol=1e-5)


def test_samplers_carry_the_image_tokens(policy):
    records = [{"image": "in/a.png"}, {"image": "in/b.png"}]
    tree = TreeSampler(num_steps=3).sample(policy, FlowMatchingKernel(0.7), ["a", "b"], BranchPlan(0, 2, 2),
                                           torch.Generator().manual_seed(0), records=records)
    assert tree.images.shape == (8, 3, 32, 32) and tree.cond["image_tokens"].shape == (2, 64, 64)
    flat = FlatSampler(num_steps=3, group_size=2).sample(policy, FlowMatchingKernel(0.7), ["a", "b"],
                                                         BranchPlan(0, 1, 2), torch.Generator().manual_seed(0),
                                                         records=records)
    assert flat.images.shape == (4, 3, 32, 32)


# ------------------------------------------------------------------ untrusted paths and files
def test_path_attacks_are_refused(tmp_path):
    root, outside = tmp_path / "prompts", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    secret = write_png(outside / "secret.png", 2)
    inside = write_png(root / "ok.png", 3)
    (root / "link.png").symlink_to(secret)
    assert resolve_image_path("ok.png", root, False, "row 0") == inside.resolve()
    with pytest.raises(ImageInputError, match=r"row 4: image '../outside/secret.png' .* outside the image folder"):
        resolve_image_path("../outside/secret.png", root, False, "row 4")
    with pytest.raises(ImageInputError, match="outside the image folder"):
        resolve_image_path("link.png", root, False, "row 1")
    with pytest.raises(ImageInputError, match="absolute path, refused.*allow_absolute_image_paths=True"):
        resolve_image_path(str(secret), root, False, "row 2")
    assert resolve_image_path(str(secret), root, True, "row 2") == secret.resolve()
    with pytest.raises(ImageInputError, match="not an existing file"):
        resolve_image_path("missing.png", root, False, "row 3")
    with pytest.raises(ImageInputError, match="policy.image_root is not set"):
        resolve_image_path("ok.png", None, False, "row 3")
    with pytest.raises(ImageInputError, match="non-empty path string"):
        resolve_image_path(7, root, False, "row 5")


def test_size_and_format_attacks_are_refused(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageInputError, match="row 0: image .*bomb.png"):
        load_image(bomb, "row 0")
    big = write_png(tmp_path / "big.png", 4, size=64)
    with pytest.raises(ImageInputError, match=r"64x64 \(4096 pixels\), more than 1024 allowed"):
        load_image(big, "row 1", max_pixels=32 * 32)
    with pytest.raises(ImageInputError, match="more than 100 allowed: shrink it"):
        load_image(big, "row 1", max_bytes=100)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageInputError, match="row 2: .*notes.png' is not a PNG, JPEG or WebP"):
        load_image(text, "row 2")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "pic.bmp")
    with pytest.raises(ImageInputError, match="is not a PNG, JPEG or WebP"):
        load_image(tmp_path / "pic.bmp", "row 3")
    assert load_image(big, "row 1").size == (64, 64)
    for suffix in ("jpg", "webp"):  # the other accepted formats decode to RGB
        Image.fromarray(np.zeros((8, 6, 4), np.uint8), "RGBA").convert("RGB").save(tmp_path / f"ok.{suffix}")
        image = load_image(tmp_path / f"ok.{suffix}", "row 4")
        assert image.mode == "RGB" and image.size == (6, 8)


def test_policy_names_the_row_of_a_bad_image(policy, edit_folder):
    with pytest.raises(ImageInputError, match=r"prompt record 1 \('b'\): image '../x.png'"):
        policy.encode(["a", "b"], [{"image": "in/a.png"}, {"image": "../x.png"}])


# ------------------------------------------------------------------ training and export
def write_config(tmp_path: Path, sampler: str, folder: Path) -> Path:
    config = tmp_path / f"{sampler}_kontext_tiny.py"
    config.write_text(f"""_base_ = ['{BASE}/models/flux_dev.py', '{BASE}/samplers/{sampler}.py',
          '{BASE}/schedules/fixed_window.py', '{BASE}/default_runtime.py']
policy = dict(type='FluxKontextPolicy', image_root='{folder}', image_size=32)
reward = dict(type='Colorfulness')
train_dataset = dict(type='PromptFile', path='{folder / "prompts.jsonl"}')
optimizer = dict(lr=5e-2)
loss = dict(clip_range=0.2, beta=0.1)
prompts_per_iter = 2
hooks = [dict(type='LoggerHook'), dict(type='CheckpointHook', interval=1),
         dict(type='EvalHook', dataset=train_dataset, interval=1, num_prompts=2)]
""")
    return config


def options(model_path) -> list[str]:
    return ["--cfg-options", f"policy.model_path={model_path}", "policy.resolution=32", "policy.dtype=float32",
            "policy.lora.r=4", "policy.lora.alpha=8", f"policy.max_sequence_length={SEQ}", "schedule.start=0",
            "schedule.depth=2", "schedule.k=2", "max_iters=1", "sampler.num_steps=3"]


@pytest.mark.parametrize("sampler", ["tree", "flat"])
def test_one_training_iteration_and_stock_pipeline_lora(tiny_kontext, edit_folder, tmp_path, sampler):
    from diffusers import FluxKontextPipeline

    config = write_config(tmp_path, sampler, edit_folder)
    extra = ["sampler.group_size=4"] if sampler == "flat" else []
    runner = train_main([str(config), "--work-dir", str(tmp_path / "run"), *options(tiny_kontext), *extra])
    assert type(runner.policy).__name__ == "FluxKontextPolicy" and runner.iteration == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
               if "losses/loss" in line]
    assert len(records) == 1 and math.isfinite(records[0]["losses/loss"])
    assert runner.policy.image_cache.encoded == 2  # the two input images, once each (eval included)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "eval/reward_mean" in r]) == 2  # the eval hook passes the records
    if sampler == "flat":
        return
    lora_dir = tmp_path / "run" / "checkpoints" / "iter_1" / "lora"
    stock = FluxKontextPipeline.from_pretrained(tiny_kontext)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = runner.policy.encode(["make it red"], [{"image": "in/a.png"}])
    target = pack_latents(x)
    ids = torch.cat([FluxKontextPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32),
                     condition_position_ids(16, 16)])
    args = dict(hidden_states=torch.cat([target, cond["image_tokens"]], 1), timestep=torch.tensor([0.6]),
                guidance=torch.tensor([3.5]), pooled_projections=cond["pooled"],
                encoder_hidden_states=cond["prompt_embeds"], txt_ids=torch.zeros(SEQ, 3), img_ids=ids,
                return_dict=False)
    with torch.no_grad():
        base = unpack_latents(stock.transformer(**args)[0][:, :64], 16, 16)
        stock.load_lora_weights(lora_dir)
        loaded = unpack_latents(stock.transformer(**args)[0][:, :64], 16, 16)
        trained = runner.policy.model_output(x, torch.tensor([0.6]), cond)
    assert not torch.allclose(base, trained)  # training changed the output
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)


def test_eval_tool_passes_the_records_to_an_edit_model(tiny_kontext, edit_folder, tmp_path):
    """tools/eval.py passes each jsonl row's record (its input image) to a policy that reads
    records; without them the edit policy refuses to encode the prompts."""
    from tools.eval import main as eval_main

    config = write_config(tmp_path, "tree", edit_folder)
    info = eval_main([str(config), "--prompts", str(edit_folder / "prompts.jsonl"), "--rewards", "reward",
                      "--num-steps", "2", "--out", str(tmp_path / "eval"), *options(tiny_kontext)])
    assert [row["prompt"] for row in info["per_prompt"]] == ["make it red", "add a hat"]
    assert (tmp_path / "eval" / "grid.png").is_file()
