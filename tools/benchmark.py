"""TreeGRPO vs flat GRPO (and ablations): reward against wall time, model forwards and edges.

    python tools/benchmark.py                                   # toy world, 2 configs x 3 seeds
    python tools/benchmark.py --configs configs/ablations/*.py configs/grpo_toy_shapes.py
    python tools/benchmark.py --budget-mode wall --budget 120 --seeds 1 --out work_dirs/bench
    python tools/benchmark.py --seeds 2 --first-seed 2 --out work_dirs/bench_b   # seeds 2, 3 elsewhere
    python tools/benchmark.py --from-results work_dirs/bench/results.json work_dirs/bench_b/results.json \
        --out work_dirs/bench_all                                # merge: one summary over all seeds
    python tools/benchmark.py --from-results base/results.json k4/results.json=tree_k4 --out table
                                                                 # variants run with --cfg-options

Every run of every config gets the same budget: model forwards (``nfe``: sampling + update,
the default), training wall seconds (``wall``) or iterations (``iters``). Same seed = same prompt
sequence, reward, optimizer and evaluation (fixed prompts and noise). Writes ``results.json``,
``summary.md`` and ``reward_vs_{seconds,nfe,edges}.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from treegrpo.inference import load_config  # noqa: E402
from treegrpo.benchmarking import markdown_table, mean_curve, summarize  # noqa: E402
from treegrpo.runner import Runner  # noqa: E402

DEFAULT_CONFIGS = ["configs/treegrpo_toy_shapes.py", "configs/grpo_toy_shapes.py"]
BUDGET_KEYS = {"nfe": "max_nfe", "wall": "max_wall_time", "iters": "max_iters"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--baseline", default=None, help="config name the speed-ups are relative to "
                        "(default: the one whose name starts with 'grpo', else the last)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per config")
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1")
    parser.add_argument("--budget-mode", choices=sorted(BUDGET_KEYS), default="nfe")
    parser.add_argument("--budget", type=float, default=250_000, help="per run, in the mode's unit")
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--eval-prompts", type=int, default=180)
    parser.add_argument("--out", default="work_dirs/benchmark")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="applied to every config, e.g. prompts_per_iter=8")
    parser.add_argument("--save-final", action="store_true", help="keep each run's final weights "
                        "(runs/<config>_seed<n>/checkpoints/), e.g. for tools/diversity.py --checkpoint")
    parser.add_argument("--from-results", nargs="+", metavar="FILE[=LABEL]",
                        help="redo summary and plots from results.json files, no training; several files "
                        "(same budget and evaluation) are merged; FILE=LABEL names the one config of a file "
                        "(a variant run with --cfg-options)")
    return parser.parse_args(argv)


def benchmark_config(path: str, seed: int, args, run_dir: Path) -> dict:
    """Train one config with one seed under the budget; returns its evaluation curve."""
    cfg = load_config(path, args.cfg_options, seed)
    budget_key = BUDGET_KEYS[args.budget_mode]
    cfg.max_iters = int(args.budget) if args.budget_mode == "iters" else 10**9
    if budget_key != "max_iters":
        cfg[budget_key] = args.budget
    evals = [h for h in cfg.hooks if h["type"] == "EvalHook"]
    if not evals:
        raise KeyError(f"{path} has no EvalHook in `hooks`: the benchmark needs its eval prompts")
    cfg.hooks = [dict(type="LoggerHook", interval=1),
                 dict(evals[0], interval=args.eval_interval, num_prompts=args.eval_prompts)]
    if args.save_final:  # once, after the last iteration (not timed: hooks run outside the iteration)
        cfg.hooks.append(dict(type="CheckpointHook", interval=10**9, max_keep=1))
    cfg.tensorboard = False
    Runner(cfg, run_dir).train()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = {r["iter"]: r for r in records if "charts/wall_time" in r}
    zero = {"charts/wall_time": 0.0, "charts/nfe_sample": 0, "charts/nfe_update": 0, "charts/edges": 0}
    curve = {"iter": [], "seconds": [], "nfe": [], "edges": [], "reward": []}
    for r in (r for r in records if "eval/reward_mean" in r):
        cost = train.get(r["iter"], zero)
        curve["iter"].append(r["iter"])
        curve["seconds"].append(cost["charts/wall_time"])
        curve["nfe"].append(cost["charts/nfe_sample"] + cost["charts/nfe_update"])
        curve["edges"].append(cost["charts/edges"])
        curve["reward"].append(r["eval/reward_mean"])
    last = train[max(train)]
    curve["time_split"] = {k: sum(r[f"time/{k}"] for r in train.values()) for k in ("sample", "reward", "update")}
    curve["iterations"] = last["iter"]
    curve["seed"] = seed
    return curve


def merge_results(saved: list[dict], labels: list[str | None] | None = None) -> tuple[dict[str, list[dict]], float, dict]:
    """Merge results.json contents of runs with the same budget and evaluation (seeds run on two
    machines, or variants run apart): per config, the seeds of every file in order. ``labels[i]``
    renames the one config of file i (a variant given as ``--cfg-options``), and its options are
    kept per label; otherwise the files must share their ``cfg_options``. Returns (results, summed
    wall seconds, the merged args with ``seeds`` = the most seeds of a config). ValueError when
    the settings differ."""
    labels = labels or [None] * len(saved)
    keys = ("budget", "budget_mode", "eval_interval", "eval_prompts")
    first = saved[0]["args"]
    unlabelled = [content["args"].get("cfg_options") for content, label in zip(saved, labels) if label is None]
    for content, label in zip(saved, labels):
        differing = [k for k in keys if content["args"].get(k) != first.get(k)]
        if label is None and content["args"].get("cfg_options") != unlabelled[0]:
            differing.append("cfg_options")
        if differing:
            raise ValueError(f"results to merge differ in {differing}: merge only runs of the same settings "
                             "(label a variant's file as FILE=NAME)")
    results: dict[str, list[dict]] = {}
    options: dict[str, dict] = {}
    for content, label in zip(saved, labels):
        if label is not None and len(content["results"]) != 1:
            raise ValueError(f"a label names the one config of a file; this file has {sorted(content['results'])}")
        for name, seeds in content["results"].items():
            results.setdefault(label or name, []).extend(seeds)
            options[label or name] = content["args"].get("cfg_options", {})
    counts = {len(seeds) for seeds in results.values()}
    args = dict(first, seeds=max(counts), cfg_options_by_config=options)
    return results, sum(content.get("wall_seconds", 0.0) for content in saved), args


def plot(results: dict[str, list[dict]], out: Path) -> list[Path]:
    """reward_vs_<axis>.png: the seed mean per config with a +-std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis, label in (("seconds", "training wall time (s)"), ("nfe", "model forwards (NFE)"),
                        ("edges", "training samples (edges)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, seeds in results.items():
            grid, mean, std = mean_curve([(np.array(s[axis]), np.array(s["reward"])) for s in seeds])
            ax.plot(grid, mean, label=name)
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel(label)
        ax.set_ylabel("eval reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"reward_vs_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [Path(c).stem for c in args.configs]
    baseline = args.baseline or next((n for n in names if n.startswith("grpo")), names[-1])
    start = time.time()
    results: dict[str, list[dict]] = {}
    if args.from_results:
        files = [item.split("=", 1) if "=" in item else [item, None] for item in args.from_results]
        results, wall, saved_args = merge_results([json.loads(Path(f).read_text()) for f, _ in files],
                                                  [label for _, label in files])
        for key in ("seeds", "budget", "budget_mode", "eval_interval", "eval_prompts"):
            setattr(args, key, saved_args[key])
        names = list(results)
        baseline = args.baseline or next((n for n in names if n.startswith("grpo")), names[-1])
    else:
        for path, name in zip(args.configs, names):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                print(f"[benchmark] {name} seed {seed}", flush=True)
                run_dir = out / "runs" / f"{name}_seed{seed}"
                results.setdefault(name, []).append(benchmark_config(path, seed, args, run_dir))
        wall = time.time() - start
    rows = summarize(results, baseline)
    target = next(r.final_mean for r in rows if r.name == baseline)
    saved_args = {k: v for k, v in vars(args).items() if k != "from_results"}
    (out / "results.json").write_text(
        json.dumps({"args": saved_args, "wall_seconds": wall, "results": results}, indent=1))
    split = "\n".join(
        f"| {name} | {np.mean([s['iterations'] for s in seeds]):.0f} | "
        + " | ".join(f"{np.mean([s['time_split'][k] for s in seeds]):.1f}" for k in ("sample", "reward", "update"))
        + " |" for name, seeds in results.items())
    summary = (
        f"# Benchmark\n\nMachine: {platform.machine()}, {platform.processor() or 'cpu'}; "
        f"{args.seeds} seed(s); budget per run: {args.budget:g} ({args.budget_mode}); evaluation every "
        f"{args.eval_interval} iterations on {args.eval_prompts} fixed prompts with fixed noise; "
        f"total wall time {wall:.0f} s. Same seed = same prompts per iteration, reward and "
        f"evaluation in every config; optimizer settings are each config's own.\n\n"
        + markdown_table(rows, target)
        + "\nMean per run: iterations and wall seconds spent in sampling / reward / update.\n\n"
        "| config | iterations | sample s | reward s | update s |\n|---|---|---|---|---|\n" + split + "\n"
    )
    (out / "summary.md").write_text(summary)
    plot(results, out)
    print(summary)
    return out


if __name__ == "__main__":
    main()
