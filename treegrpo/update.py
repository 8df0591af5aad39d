"""Recomputing edge log-probs for the policy update, grouped by parent.

One model forward at a parent state gives the new log-probs of all its k child edges (the
amortised update of TreeGRPO: k policy updates per forward). The math is the sampler's: the same
kernel, the same levels and guidance, float32 step math.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .kernels.gaussian import gaussian_kl_equal_std
from .rollout import Rollout, index_cond


@dataclass
class EdgeBatch:
    """New log-probs of the edges below a set of parents. E' edges, M' parents."""

    child: torch.Tensor  # [E'] long, node id of each edge's child
    log_prob: torch.Tensor  # [E'] log-prob under the current policy (with grad)
    kl: torch.Tensor | None  # [E'] KL(current || reference) per edge, or None
    forwards: int  # model rows evaluated (NFE of this batch, CFG counted twice)


def children_of(parent: torch.Tensor, parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges whose parent is in ``parents`` [M'].

    Returns (child node ids [E'], slot [E'] = position of each child's parent in ``parents``).
    """
    order = torch.argsort(parents)
    sorted_parents = parents[order]
    is_child = torch.isin(parent, parents)
    child = torch.nonzero(is_child).flatten()
    slot = order[torch.searchsorted(sorted_parents, parent[child])]
    return child, slot


class ReferenceCache:
    """The reference model's predictions at parent states, kept for the later inner epochs of
    one update: the reference weights and the parent states do not change between epochs, so one
    reference forward per parent per iteration is enough (``update.num_inner_epochs > 1``).

    ``get(parents [M'])`` -> the stored predictions [M', ...], or None unless all are stored;
    ``put(parents, out [M', ...])`` stores them. Memory: a tensor the size of ``rollout.latents``
    (one row per node, rows of parents filled)."""

    def __init__(self, num_nodes: int) -> None:
        self.filled = torch.zeros(num_nodes, dtype=torch.bool)
        self.out: torch.Tensor | None = None

    def get(self, parents: torch.Tensor) -> torch.Tensor | None:
        if self.out is None or not bool(self.filled[parents.cpu()].all()):
            return None
        return self.out[parents.to(self.out.device)]

    def put(self, parents: torch.Tensor, out: torch.Tensor) -> None:
        if self.out is None:
            self.out = out.new_empty((len(self.filled), *out.shape[1:]))
        self.out[parents.to(out.device)] = out
        self.filled[parents.cpu()] = True


def edge_log_probs(
    policy, kernel, rollout: Rollout, parents: torch.Tensor, with_kl: bool = False,
    model: torch.nn.Module | None = None, reference_cache: ReferenceCache | None = None,
) -> EdgeBatch:
    """One forward at the ``parents`` [M'] node states -> log-probs of all their child edges.

    ``model``: the module whose gradients train the policy (the runner's DDP / FSDP wrapper;
    default the bare denoiser); the KL reference is ``policy.reference()``, whose predictions
    come from ``reference_cache`` when it holds them all (and are stored there otherwise)."""
    nfe_before = policy.nfe
    x = rollout.latents[parents]
    step = rollout.step[parents]
    cond = index_cond(rollout.cond, rollout.prompt_index[parents])
    level = rollout.levels[step]
    out = policy.predict(x, level, cond, rollout.guidance_scale, model=model)
    child, slot = children_of(rollout.parent, parents)
    x_next = rollout.latents[child]
    log_prob = kernel.log_prob(x_next, x[slot], out[slot], rollout.levels, step[slot])
    kl = None
    if with_kl:
        out_ref = None if reference_cache is None else reference_cache.get(parents)
        if out_ref is None:
            with torch.no_grad(), policy.reference() as reference:
                out_ref = policy.predict(x, level, cond, rollout.guidance_scale, model=reference)
            if reference_cache is not None:
                reference_cache.put(parents, out_ref)
        mean, std = kernel.sde_mean_std(x, out, rollout.levels, step)
        mean_ref, _ = kernel.sde_mean_std(x, out_ref, rollout.levels, step)
        kl = gaussian_kl_equal_std(mean, mean_ref, std)[slot]
    return EdgeBatch(child=child, log_prob=log_prob, kl=kl, forwards=policy.nfe - nfe_before)


UPDATE_DEFAULTS = dict(num_inner_epochs=1, num_minibatches=1, micro_batch_size=64, max_grad_norm=1.0,
                       per_step_batches=False, prune=None)
PRUNE_SCORES = ("max", "mean")


def update_settings(cfg: dict | None) -> dict:
    """The config's ``update`` dict over :data:`UPDATE_DEFAULTS`; a key the update loop does not
    read (e.g. a misspelt ``micro_batchsize``) is ignored with a warning naming the known keys."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(UPDATE_DEFAULTS))
    if unknown:
        warnings.warn(f"update keys {unknown} are not used by the policy update and are ignored; "
                      f"known keys: {sorted(UPDATE_DEFAULTS)}", stacklevel=2)
    settings = {**UPDATE_DEFAULTS, **{key: value for key, value in cfg.items() if key in UPDATE_DEFAULTS}}
    settings["prune"] = prune_settings(settings["prune"], settings["per_step_batches"])
    return settings


def prune_settings(prune: dict | None, per_step_batches: bool = False) -> dict | None:
    """Validate ``update.prune = dict(keep_fraction, score='max')``; None (or keep_fraction=1.0 /
    None) turns pruning off and returns None, so the update is exactly the unpruned one."""
    if prune is None:
        return None
    if not isinstance(prune, dict):
        raise ValueError(f"update.prune must be None or a dict(keep_fraction, score), got {prune!r}")
    unknown = sorted(set(prune) - {"keep_fraction", "score"})
    if unknown:
        raise ValueError(f"update.prune keys {unknown} are unknown; allowed: ['keep_fraction', 'score']")
    keep_fraction = prune.get("keep_fraction")
    score = prune.get("score", "max")
    if score not in PRUNE_SCORES:
        raise ValueError(f"update.prune.score must be one of {list(PRUNE_SCORES)}, got {score!r}")
    if keep_fraction is None or keep_fraction == 1.0:
        return None
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) \
            or not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"update.prune.keep_fraction must be a number in (0, 1], got {keep_fraction!r}")
    if per_step_batches:
        # the kept parents per step differ between ranks: unequal micro-batch counts hang DDP
        raise ValueError("update.prune cannot be combined with update.per_step_batches=True")
    return dict(keep_fraction=float(keep_fraction), score=score)


def select_parents(
    parents: torch.Tensor, parent: torch.Tensor, prompt_index: torch.Tensor, advantage: torch.Tensor,
    keep_fraction: float, score: str = "max",
) -> torch.Tensor:
    """The most informative parents [M'] of ``parents`` [M] (sorted node ids), in their order.

    A parent's score is the max (or mean) |advantage| [N] of its child edges (``parent`` [N], -1
    for roots). Per tree (``prompt_index`` [N]) the top ``ceil(keep_fraction * n)`` of its n parents
    are kept, ties going to the lower node id. Per tree, not a global threshold: every process then
    keeps the same number of parents (equal trees on all ranks), so all ranks run the same number of
    forwards / backwards, which DDP needs (a global |A| threshold would hang it).
    """
    if score not in PRUNE_SCORES:
        raise ValueError(f"score must be one of {list(PRUNE_SCORES)}, got {score!r}")
    child, slot = children_of(parent, parents)
    magnitude = advantage[child].detach().abs().float().cpu()
    slot = slot.cpu()
    reduce = {"max": "amax", "mean": "mean"}[score]
    value = torch.zeros(parents.numel()).scatter_reduce(0, slot, magnitude, reduce, include_self=False)
    node = parents.cpu()
    tree = prompt_index[parents].cpu()
    keep = torch.zeros(parents.numel(), dtype=torch.bool)
    for t in torch.unique(tree).tolist():
        members = torch.nonzero(tree == t).flatten()
        members = members[torch.argsort(node[members], stable=True)]  # ties: lower node id first
        members = members[torch.argsort(-value[members], stable=True)]
        num_keep = math.ceil(round(keep_fraction * members.numel(), 9))
        keep[members[:num_keep]] = True
    return parents[keep.to(parents.device)]


def plan_micro_batches(
    parents: torch.Tensor,
    parent_step: torch.Tensor,
    num_minibatches: int,
    micro_batch_size: int,
    generator: torch.Generator,
    per_step: bool = False,
) -> list[list[torch.Tensor]]:
    """Split the parent nodes [M] of a rollout into minibatches (one optimizer step each) of
    micro-batches (one forward each, at most ``micro_batch_size`` parents).

    Default: parents shuffled, cut into ``num_minibatches`` parts, each cut into micro-batches of
    ``micro_batch_size``. ``per_step=True``: the parents of one step, in node order, cut into
    consecutive chunks of ``micro_batch_size``; when a step's parents fit in one chunk it is exactly
    the batch the sampler sent through the model (bitwise-equal first ratio on batch-dependent GPU
    kernels). The order of the steps is shuffled and a step's chunks stay in one minibatch.
    """
    if per_step:
        steps = [parents[parent_step == s] for s in torch.unique(parent_step).tolist()]
        order = torch.randperm(len(steps), generator=generator).tolist()
        steps = [list(steps[i].split(micro_batch_size)) for i in order]
        size = -(-len(steps) // num_minibatches)  # ceil
        return [[chunk for step in steps[i : i + size] for chunk in step] for i in range(0, len(steps), size)]
    shuffled = parents[torch.randperm(parents.numel(), generator=generator).to(parents.device)]
    return [list(part.split(micro_batch_size)) for part in shuffled.chunk(num_minibatches)]


def build_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    """``dict(type='AdamW', lr=...)`` -> a ``torch.optim`` optimizer over ``params``."""
    cfg = dict(cfg)
    name = cfg.pop("type", "AdamW")
    optimizer_cls = getattr(torch.optim, name, None)
    if not isinstance(optimizer_cls, type) or not issubclass(optimizer_cls, torch.optim.Optimizer):
        raise KeyError(f"optimizer type {name!r} is not a torch.optim optimizer (e.g. 'AdamW', 'SGD')")
    return optimizer_cls(params, **cfg)
