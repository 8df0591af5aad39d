"""Cost of one training iteration with tree vs flat rollouts: time split, NFE/s and peak memory.

    python tools/bench_rollout.py --policy sd3 --random-weights --out work_dirs/bench_rollout/sd3.json
    python tools/bench_rollout.py --policy sd3 --random-weights --shapes tiny --device cpu --iters 1 --warmup 0
    python tools/bench_rollout.py --policy sd3 --model-path /models/stable-diffusion-3.5-medium --guidance-scale 4.5
    python tools/bench_rollout.py --policy flux --random-weights --out work_dirs/bench_rollout/flux.json
    python tools/bench_rollout.py --policy wan --random-weights --shapes tiny --device cpu --iters 1 --warmup 0

Each mode (``tree``: TreeSampler + TreeBackup; ``flat``: FlatSampler + GroupNorm with
G = k**depth images per prompt, the same window, reward, loss and update) builds the project's own
Runner from a config and runs ``Runner.train_iteration`` itself, timing each phase (sample, reward,
advantage, update) between ``torch.cuda.synchronize`` calls and recording its peak memory. ``--random-weights``
builds the pipeline in memory, directly in ``--dtype`` (real shapes: SD3.5-medium transformer with
CLIP-L/G and the 16-channel VAE, no T5; SD1.5; or FLUX.1-dev: 12B transformer, CLIP-L, T5-XXL
encoder and the 16-channel VAE, ~34 GB of bf16 weights; Qwen-Image: 20B transformer, Qwen2.5-VL-7B
and its VAE; Wan 2.1 T2V 1.3B: transformer, UMT5-XXL encoder, Wan VAE, 33 frames at 480x832, the
sizes of tools/memory_plan.py; tiny shapes: tools/make_tiny_models.py),
saves it to a temporary folder (safetensors) and loads it through the real policy class with the
LoRA of configs/_base_/models/. The reward is JPEGCompressibility (cheap but visible; Wan: averaged
over 4 frames of each clip). FLUX.1-dev
samples without CFG: ``--guidance-scale 1`` (the default) and the policy's embedded ``guidance``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import re
import resource
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from tools.bench_models import (BUILDERS, CLIP_G, CLIP_L, FLUX_DEV_TRANSFORMER, FLUX_VAE,  # noqa: E402,F401
                                QWEN25_VL_7B, QWEN_IMAGE, QWEN_IMAGE_VAE, RESOLUTION, SD3_VAE, SD15_UNET, SD15_VAE,
                                SD35_MEDIUM_TRANSFORMER, T5_NOTE, T5_XXL, UMT5_XXL, VIDEO, WAN21_1_3B, WAN_VAE)
from treegrpo.inference import load_config  # noqa: E402
from treegrpo.policies.diffusers_common import check_dtype  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402

PHASES = ("sample", "reward", "advantage", "update")
BASE_CONFIGS = {"sd3": "configs/_base_/models/sd35_medium.py", "sd15": "configs/_base_/models/sd15.py",
                "flux": "configs/_base_/models/flux_dev.py", "toy": "configs/_base_/models/toy_flow.py",
                "qwenimage": "configs/_base_/models/qwenimage.py", "wan": "configs/_base_/models/wan.py"}
PROMPTS = ["a photo of a cat on a sofa", "a red car in the rain", "a bowl of fruit on a wooden table",
           "a lighthouse at sunset", "an astronaut riding a horse", "a city street at night",
           "a watercolor painting of mountains", "a close-up of a sunflower"]
def write_random_model(policy: str, shapes: str, dtype: str, device: str, folder: Path) -> dict:
    """Build the pipeline with random weights on ``device`` directly in ``dtype`` (FLUX.1-dev built in
    float32 first would take 67 GB), save it to ``folder``."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(check_dtype(dtype))
    try:
        with torch.device(device):
            pipe = BUILDERS[(policy, shapes)]()
    finally:
        torch.set_default_dtype(previous)
    pipe.to(check_dtype(dtype)).save_pretrained(folder, safe_serialization=True)
    del pipe
    empty_cache(device)
    if shapes == "tiny":
        return {"builder": f"tools/make_tiny_models.py {BUILDERS[(policy, shapes)].__name__}"}
    if policy == "sd3":
        return {"transformer": SD35_MEDIUM_TRANSFORMER, "text_encoder": CLIP_L, "text_encoder_2": CLIP_G,
                "t5": T5_NOTE, "vae": SD3_VAE}
    if policy == "flux":
        return {"transformer": FLUX_DEV_TRANSFORMER, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL, "vae": FLUX_VAE}
    if policy == "qwenimage":
        return {"transformer": QWEN_IMAGE, "text_encoder": QWEN25_VL_7B, "vae": QWEN_IMAGE_VAE}
    if policy == "wan":
        return {"transformer": WAN21_1_3B, "text_encoder": UMT5_XXL, "vae": WAN_VAE}
    return {"unet": SD15_UNET, "text_encoder": CLIP_L, "vae": SD15_VAE}


# ----------------------------------------------------------------------------- closed forms
def suffix_length(start: int, depth: int, num_steps: int, suffix_steps: int | None) -> int:
    """ODE steps after the window: ``T - start - depth``, at most ``suffix_steps``."""
    suffix = num_steps - start - depth
    return suffix if suffix_steps is None else min(suffix, suffix_steps)


def tree_nfe(prompts: int, k: int, depth: int, start: int, num_steps: int,
             suffix_steps: int | None = None) -> tuple[int, int]:
    """(sampling, update) forwards without CFG: ``P (p + sum_l k^(l-1) + k^d s)`` and one per parent."""
    suffix = suffix_length(start, depth, num_steps, suffix_steps)
    sample = prompts * (start + sum(k ** (level - 1) for level in range(1, depth + 1)) + k**depth * suffix)
    return sample, prompts * sum(k**level for level in range(depth))


def flat_nfe(prompts: int, group: int, depth: int, start: int, num_steps: int,
             suffix_steps: int | None = None) -> tuple[int, int]:
    """(sampling, update) forwards without CFG: ``P G (p + d + s)`` (``P G T`` with the full suffix)
    and ``P G d`` (one per chain edge)."""
    steps = start + depth + suffix_length(start, depth, num_steps, suffix_steps)
    return prompts * group * steps, prompts * group * depth


# ----------------------------------------------------------------------------- measuring
def empty_cache(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _rss_bytes(field: str = "VmHWM") -> int:
    """Peak (VmHWM, reset per phase) or current (VmRSS) RSS from /proc/self/status; elsewhere
    getrusage's lifetime maximum."""
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_bytes()


def memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, reset before each phase (weights, optimizer state included)"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "process peak RSS (VmHWM), reset before each phase"
    except OSError:
        return "process peak RSS since start (getrusage; this system cannot reset it per phase)"


class MeasuredRunner(Runner):
    """A Runner whose iteration phases also record their peak memory (``self.peaks``), with the
    device synchronised around each phase (as the runner's timer does on CUDA)."""

    peaks: dict[str, int]

    @contextlib.contextmanager
    def phase(self, times: dict[str, float], name: str):
        _reset_peak(self.device)
        with super().phase(times, name):
            yield
        self.__dict__.setdefault("peaks", {})[name] = _peak(self.device)


def one_iteration(runner: MeasuredRunner, iteration: int) -> dict:
    """One training iteration (``Runner.train_iteration`` itself): seconds and peak memory per phase."""
    metrics = runner.train_iteration(iteration)
    return {"seconds": {p: metrics[f"time/{p}"] for p in PHASES}, "peak_bytes": dict(runner.peaks),
            "nfe_sample": metrics["rollout/nfe"], "nfe_update": metrics["update/nfe"],
            "leaves": metrics["rollout/leaves"], "edges": metrics["rollout/edges"],
            "loss": metrics.get("losses/loss")}


def make_config(args: argparse.Namespace, mode: str, model_path: Path | None) -> Config:
    """The run config of one mode: the model base config + the benchmark's sampler and update."""
    base = load_config(ROOT / BASE_CONFIGS[args.policy])
    policy, kernel = dict(base.policy), dict(base.kernel)
    if args.policy != "toy":
        policy.update(model_path=str(model_path), dtype=args.dtype)
        policy.update(VIDEO[args.shapes] if args.policy == "wan" else dict(resolution=args.resolution))
        if args.policy == "sd3":
            policy["use_t5"] = False
    policy["device"] = args.device
    if args.kl_beta > 0 and policy.get("lora") is None:  # full fine-tuning: a frozen copy is the reference
        policy["keep_reference"] = True
    sampler = dict(num_steps=args.num_steps, guidance_scale=args.guidance_scale, chunk_size=args.chunk_size,
                   suffix_steps=args.suffix_steps)
    if mode == "tree":
        sampler["type"], advantage = "TreeSampler", dict(type="TreeBackup", weighting="prob")
    else:
        sampler.update(type="FlatSampler", group_size=args.k**args.depth)
        advantage = dict(type="GroupNorm")
    return Config(dict(
        policy=policy, kernel=kernel, sampler=sampler, advantage=advantage,
        schedule=dict(type="FixedWindow", start=args.window_start, depth=args.depth, k=args.k),
        reward=reward_config(args.policy),
        loss=dict(type="GRPOClipLoss", clip_range=1e-4, beta=args.kl_beta),
        train_dataset=base.get("train_dataset", dict(type="PromptList", prompts=PROMPTS)),
        optimizer=dict(type="AdamW", lr=1e-5),
        max_iters=args.warmup + args.iters, prompts_per_iter=args.prompts_per_iter,
        update=dict(micro_batch_size=args.micro_batch_size, per_step_batches=args.per_step_batches),
        hooks=[], seed=0, tensorboard=False, cpu=torch.device(args.device).type == "cpu",
        mixed_precision=mixed_precision(args)))


def reward_config(policy: str) -> dict:
    """JPEG compressibility (cheap but visible); for Wan's clips averaged over 4 evenly spaced frames."""
    jpeg = dict(type="JPEGCompressibility", quality=95)
    return dict(type="FrameAveragedReward", num_frames=4, reward=jpeg) if policy == "wan" else jpeg


def mixed_precision(args: argparse.Namespace) -> str:
    """accelerate's autocast as the SD3.5 config runs it: bf16 on CUDA with bfloat16 weights."""
    return "bf16" if args.dtype == "bfloat16" and torch.device(args.device).type == "cuda" else "no"


def run_mode(args: argparse.Namespace, mode: str, model_path: Path | None, work_dir: Path) -> dict:
    """Build a Runner for ``mode``, run warm-up + measured iterations; medians and peaks."""
    device, mib = torch.device(args.device), 1024**2
    in_use = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss_bytes("VmRSS")
    runner = MeasuredRunner(make_config(args, mode, model_path), work_dir / mode)
    denoiser = runner.policy.denoiser
    info = {"latent_shape": list(runner.policy.latent_shape),
            "denoiser_parameters": sum(p.numel() for p in denoiser.parameters()),
            "trainable_parameters": sum(p.numel() for p in runner.policy.trainable_parameters()),
            "embedded_guidance": getattr(runner.policy, "guidance", None)}  # FLUX.1-dev's distilled guidance
    records = [one_iteration(runner, it) for it in range(args.warmup + args.iters)][args.warmup:]
    del runner, denoiser
    empty_cache(args.device)
    seconds = {p: statistics.median(r["seconds"][p] for r in records) for p in PHASES}
    seconds["total"] = statistics.median(sum(r["seconds"].values()) for r in records)
    nfe = {"sample": records[-1]["nfe_sample"], "update": records[-1]["nfe_update"]}
    nfe["total"] = nfe["sample"] + nfe["update"]
    cfg = 2 if args.guidance_scale > 1 else 1
    if mode == "tree":
        sample, update = tree_nfe(args.prompts_per_iter, args.k, args.depth, args.window_start, args.num_steps,
                                  args.suffix_steps)
    else:
        sample, update = flat_nfe(args.prompts_per_iter, args.k**args.depth, args.depth, args.window_start,
                                  args.num_steps, args.suffix_steps)
    return dict(
        info, memory_in_use_before_mib=in_use / mib, seconds=seconds,
        seconds_per_iter={p: [r["seconds"][p] for r in records] for p in PHASES},
        nfe_per_iter=nfe,
        nfe_closed_form={"sample": sample * cfg, "update": update * cfg * (2 if args.kl_beta > 0 else 1)},
        nfe_per_second={"total": nfe["total"] / seconds["total"], "sample": nfe["sample"] / seconds["sample"],
                        "update": nfe["update"] / seconds["update"]},
        images_per_iter=records[-1]["leaves"], edges_per_iter=records[-1]["edges"],
        loss=[r["loss"] for r in records],
        peak_memory_mib={p: max(r["peak_bytes"][p] for r in records) / mib for p in PHASES})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=sorted(BASE_CONFIGS), default="sd3")
    parser.add_argument("--random-weights", action="store_true",
                        help="build sd3/sd15/flux/qwenimage/wan with random weights (no download)")
    parser.add_argument("--model-path", help="a local diffusers folder or hub id (instead of --random-weights)")
    parser.add_argument("--shapes", choices=["tiny", "real"], help="default: real on CUDA, tiny on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--iters", type=int, default=3, help="measured iterations (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured iterations first")
    parser.add_argument("--prompts-per-iter", type=int, default=4)
    parser.add_argument("--k", type=int, default=2, help="children per node (flat: G = k**depth images per prompt)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--window-start", type=int, default=0)
    parser.add_argument("--suffix-steps", type=int, help="ODE steps after the window (default: all left)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help=">1 runs CFG (doubles every forward); FLUX.1-dev samples with 1")
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="sampler rows per forward outside the window (as the SD3.5 config)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="parents per update forward")
    parser.add_argument("--per-step-batches", action="store_true", help="update with the sampler's per-step batches")
    parser.add_argument("--kl-beta", type=float, default=0.0, help=">0 adds the reference forward of the KL term")
    parser.add_argument("--out", default="work_dirs/bench_rollout/results.json")
    parser.add_argument("--tmp-dir", help="where the random-weight model is written (default: the system temp)")
    args = parser.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    args.shapes = args.shapes or ("real" if on_cuda else "tiny")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    check_dtype(args.dtype)
    args.resolution = RESOLUTION[args.shapes]
    for key in ("iters", "prompts_per_iter", "k", "depth", "num_steps"):
        if getattr(args, key) < (2 if key == "k" else 1):
            raise ValueError(f"--{key.replace('_', '-')} must be >= {2 if key == 'k' else 1}, got {getattr(args, key)}")
    if args.warmup < 0 or args.window_start < 0 or args.window_start + args.depth > args.num_steps:
        raise ValueError(f"need warmup >= 0 and 0 <= window-start <= num-steps - depth, got warmup={args.warmup}, "
                         f"window-start={args.window_start}, depth={args.depth}, num-steps={args.num_steps}")
    if args.suffix_steps is not None and args.suffix_steps < 1:
        raise ValueError(f"--suffix-steps must be >= 1 (or left out for all the steps left), got {args.suffix_steps}")
    if args.policy != "toy" and not (args.random_weights or args.model_path):
        raise ValueError(f"--policy {args.policy} needs --random-weights or --model-path")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import diffusers

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_rollout_", dir=args.tmp_dir) as tmp:
        model_path, model = None, {"weights": "shipped toy weights (treegrpo/toy/weights)"}
        if args.policy != "toy":
            model_path, model = Path(args.model_path or Path(tmp) / "model"), {"weights": args.model_path}
            if args.model_path is None:
                shapes = write_random_model(args.policy, args.shapes, args.dtype, args.device, model_path)
                model = {"weights": "random", **shapes}
        modes = {mode: run_mode(args, mode, model_path, Path(tmp)) for mode in ("tree", "flat")}
    tree, flat = modes["tree"]["seconds"]["total"], modes["flat"]["seconds"]["total"]
    results = {
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                   else (platform.processor() or platform.machine())},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "dtype": args.dtype if args.policy != "toy" else "float32",  # the toy policy keeps float32 weights
        "memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "memory_note": memory_note(device),
        "shapes": args.shapes, "resolution": args.resolution if args.policy != "toy" else 32,
        "video": VIDEO[args.shapes] if args.policy == "wan" else None,
        "model": {"policy": args.policy, **model,
                  "lora": load_config(ROOT / BASE_CONFIGS[args.policy]).policy.get("lora")},
        "config": {k: getattr(args, k) for k in ("iters", "warmup", "prompts_per_iter", "k", "depth", "num_steps",
                                                 "window_start", "suffix_steps", "guidance_scale", "chunk_size",
                                                 "micro_batch_size", "per_step_batches", "kl_beta")}
        | {"images_per_prompt": args.k**args.depth, "mixed_precision": mixed_precision(args)},
        "modes": modes,
        "flat_over_tree": {"seconds_per_iter": flat / tree, "nfe_per_iter": (
            modes["flat"]["nfe_per_iter"]["total"] / modes["tree"]["nfe_per_iter"]["total"])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for mode, r in modes.items():
        split = " ".join(f"{p} {r['seconds'][p]:.3f}s" for p in PHASES)
        print(f"[{mode}] {r['seconds']['total']:.3f} s/iter ({split}); NFE/iter {r['nfe_per_iter']['total']} "
              f"({r['nfe_per_second']['total']:.1f}/s); peak {max(r['peak_memory_mib'].values()):.0f} MiB")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
