"""Pretrain the toy world's models on freshly rendered shapes and write the shipped weights.

1. The attribute classifier (the alignment reward), on jittered renders with augmentation
   (blur, colour shift, noise) so it stays sensible on imperfect generations.
2. The text encoder + denoiser jointly with the flow-matching loss
   ``|| D(x_t, sigma, text) - (eps - x0) ||^2``, ``x_t = (1 - sigma) x0 + sigma eps``, sigma
   logit-normal, a fraction of prompts replaced by the empty prompt (for CFG). The learning
   rate is constant after a warm-up, so the model after s steps of a long run is the model of
   a run with ``--steps s``.

Writes ``toy_classifier.safetensors``, ``toy_generator.safetensors`` (prefixes
``text_encoder.`` / ``denoiser.``) and ``toy_config.json`` into ``--out-dir``.

    python tools/pretrain_toy.py --device cuda             # the shipped weights
    python tools/pretrain_toy.py --steps 300 --classifier-steps 300   # a quick CPU check
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from treegrpo.toy import WEIGHTS_DIR  # noqa: E402
from treegrpo.toy.models import (  # noqa: E402
    ToyClassifier, ToyDenoiser, ToyTextEncoder, attribute_probabilities, count_parameters,
    euler_sample, save_models, shifted_sigmas, spec_targets,
)
from treegrpo.toy.prompts import ATTRIBUTES, all_specs, sample_specs, spec_to_prompt, tokenize  # noqa: E402
from treegrpo.toy.render import render_specs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1500, help="generator training steps")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="generator learning rate")
    parser.add_argument("--classifier-lr", type=float, default=1e-3)
    parser.add_argument("--null-fraction", type=float, default=0.1, help="share of empty prompts")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500, help="generator steps between reward evals")
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    for key in ("steps", "classifier_steps", "batch_size", "eval_every", "eval_samples"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not 0.0 <= args.null_fraction < 1.0:
        raise SystemExit(f"--null-fraction must be in [0, 1), got {args.null_fraction}")
    return args


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur mix, per-channel colour shift and Gaussian noise; images [B, 3, H, W] in [0, 1]."""
    u = torch.rand(images.shape[0], 2, 1, 1, 1, generator=generator)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = images + u[:, 0] * (blurred - images)
    shift = (torch.rand(images.shape[0], 3, 1, 1, generator=generator) * 2 - 1) * 0.06
    noise = torch.randn(images.shape, generator=generator) * 0.12 * u[:, 1]
    return (images + shift + noise).clamp(0.0, 1.0)


def warmup_lr(step: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup))


def train_classifier(
    args: argparse.Namespace, device: torch.device, gen: torch.Generator
) -> tuple[ToyClassifier, dict]:
    torch.manual_seed(args.seed)
    model = ToyClassifier().to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=args.classifier_lr, weight_decay=1e-4)
    loss = torch.zeros(())
    for step in range(args.classifier_steps):
        for group in optim.param_groups:
            group["lr"] = warmup_lr(step, args.classifier_lr, 100)
        specs = sample_specs(args.batch_size, gen)
        images = augment(render_specs(specs, generator=gen), gen).to(device)
        targets = spec_targets(specs).to(device)
        logits = model(images)
        loss = sum(F.cross_entropy(logits[name], targets[:, a]) for a, name in enumerate(ATTRIBUTES))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step % 250 == 0 or step == args.classifier_steps - 1:
            print(f"classifier step {step:5d} loss {loss.item():.4f}", flush=True)
    model.eval()
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    specs = all_specs()
    clean = render_specs(specs, generator=eval_gen)
    stats = {"classifier_final_loss": float(loss.item())}
    with torch.no_grad():
        for label, images in (("clean", clean), ("augmented", augment(clean, eval_gen))):
            logits = model(images.to(device))
            targets = spec_targets(specs).to(device)
            for a, name in enumerate(ATTRIBUTES):
                accuracy = (logits[name].argmax(dim=1) == targets[:, a]).float().mean().item()
                stats[f"classifier_accuracy_{label}_{name}"] = round(accuracy, 4)
    return model, stats


def generator_loss(
    text_encoder: ToyTextEncoder, denoiser: ToyDenoiser, batch_size: int, null_fraction: float,
    gen: torch.Generator, device: torch.device,
) -> torch.Tensor:
    """Flow-matching loss on one freshly rendered batch."""
    specs = sample_specs(batch_size, gen)
    drop = (torch.rand(batch_size, generator=gen) < null_fraction).tolist()
    prompts = ["" if d else spec_to_prompt(s) for s, d in zip(specs, drop)]
    x0 = render_specs(specs, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal
    s = sigma.view(-1, 1, 1, 1)
    x_t = ((1 - s) * x0 + s * eps).to(device)
    target = (eps - x0).to(device)
    text = text_encoder(tokenize(prompts).to(device))
    pred = denoiser(x_t, sigma.to(device), text["tokens"], text["pooled"])
    return F.mse_loss(pred, target)


@torch.no_grad()
def evaluate_generator(
    text_encoder: ToyTextEncoder, denoiser: ToyDenoiser, classifier: ToyClassifier,
    num_samples: int, seed: int, device: torch.device, num_steps: int = 10,
    guidance_scales: tuple[float, ...] = (1.0, 3.0),
) -> dict[str, float]:
    """Mean alignment reward (mean attribute probability) of samples at ``num_steps`` Euler steps."""
    text_encoder.eval()
    denoiser.eval()
    gen = torch.Generator().manual_seed(seed + 2)
    specs = sample_specs(num_samples, gen)
    noise = torch.randn(num_samples, 3, 32, 32, generator=gen).to(device)
    cond = text_encoder(tokenize([spec_to_prompt(s) for s in specs]).to(device))
    null = text_encoder(tokenize([""] * num_samples).to(device))
    targets = spec_targets(specs)
    stats = {}
    for scale in guidance_scales:
        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = denoiser(x, sigma, cond["tokens"], cond["pooled"])
            if scale == 1.0:
                return v
            v_null = denoiser(x, sigma, null["tokens"], null["pooled"])
            return v_null + scale * (v - v_null)

        x0 = euler_sample(velocity, noise, shifted_sigmas(num_steps))
        images = ((x0 + 1) / 2).clamp(0, 1)
        probs = attribute_probabilities(classifier(images), targets).cpu()
        stats[f"reward_cfg{scale:g}"] = round(probs.mean().item(), 4)
        for a, name in enumerate(ATTRIBUTES):
            stats[f"reward_cfg{scale:g}_{name}"] = round(probs[:, a].mean().item(), 4)
    denoiser.train()
    return stats


def train_generator(
    args: argparse.Namespace, device: torch.device, gen: torch.Generator, classifier: ToyClassifier
) -> tuple[ToyTextEncoder, ToyDenoiser, dict, list[dict]]:
    torch.manual_seed(args.seed)
    text_encoder = ToyTextEncoder().to(device)
    denoiser = ToyDenoiser().to(device)
    params = list(text_encoder.parameters()) + list(denoiser.parameters())
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    history: list[dict] = []
    running, start = 0.0, time.time()
    for step in range(args.steps):
        for group in optim.param_groups:
            group["lr"] = warmup_lr(step, args.lr, 200)
        loss = generator_loss(text_encoder, denoiser, args.batch_size, args.null_fraction, gen, device)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            stats = evaluate_generator(
                text_encoder, denoiser, classifier, args.eval_samples, args.seed, device
            )
            seconds = round(time.time() - start, 1)
            history.append({"step": done, "loss_ema": round(running, 5), "seconds": seconds, **stats})
            print(json.dumps(history[-1]), flush=True)
        elif step % 100 == 0:
            print(f"generator step {step:5d} loss {loss.item():.4f} (ema {running:.4f})", flush=True)
    text_encoder.eval()
    denoiser.eval()
    return text_encoder, denoiser, {"generator_final_loss_ema": round(running, 5), **history[-1]}, history


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)  # all data is drawn on CPU: same data on any device
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    classifier, classifier_stats = train_classifier(args, device, gen)
    print(json.dumps(classifier_stats), flush=True)
    save_models(args.out_dir / "toy_classifier.safetensors", {"classifier": classifier})
    text_encoder, denoiser, generator_stats, history = train_generator(args, device, gen, classifier)
    save_models(
        args.out_dir / "toy_generator.safetensors", {"text_encoder": text_encoder, "denoiser": denoiser}
    )
    config = {
        "text_encoder": text_encoder.config,
        "denoiser": denoiser.config,
        "classifier": classifier.config,
        "parameters": {
            "text_encoder": count_parameters(text_encoder),
            "denoiser": count_parameters(denoiser),
            "classifier": count_parameters(classifier),
        },
        "training": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "results": {**classifier_stats, **generator_stats, "wall_seconds": round(time.time() - start, 1)},
        "history": history,
        "torch": torch.__version__,
    }
    tmp = args.out_dir / "toy_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, args.out_dir / "toy_config.json")
    print(f"wrote {args.out_dir}/toy_generator.safetensors, toy_classifier.safetensors, toy_config.json")


if __name__ == "__main__":
    main()
