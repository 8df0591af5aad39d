"""Prompt source of the toy world: prompts drawn from the shape grammar.

The 900 distinct specs are split once, by a fixed permutation, into 720 train and 180 eval
specs, so the two splits never share a prompt whatever the dataset seed.
"""
from __future__ import annotations

import torch

from treegrpo.registry import DATASETS
from treegrpo.toy.prompts import ATTRIBUTES, ShapeSpec, all_specs, spec_to_prompt

SPLIT_SEED = 2512_08153  # fixes which specs are held out for evaluation
EVAL_FRACTION = 0.2
SPLITS = ("train", "eval")


def split_specs(split: str) -> list[ShapeSpec]:
    """The specs of ``split`` ('train' or 'eval'), in the fixed order of the split permutation."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    specs = all_specs()
    order = torch.randperm(len(specs), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    num_eval = round(EVAL_FRACTION * len(specs))
    chosen = order[:num_eval] if split == "eval" else order[num_eval:]
    return [specs[i] for i in chosen]


@DATASETS.register_module()
class ToyShapesPrompts:
    """``num_prompts`` grammar prompts of one split, deterministic for ``seed``.

    The list is a concatenation of seeded permutations of the split's specs, so every spec
    appears once before any repeats.
    """

    def __init__(self, num_prompts: int = 1000, seed: int = 0, split: str = "train") -> None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        pool = split_specs(split)
        generator = torch.Generator().manual_seed(seed)
        chosen: list[ShapeSpec] = []
        while len(chosen) < num_prompts:
            chosen.extend(pool[i] for i in torch.randperm(len(pool), generator=generator).tolist())
        self.split = split
        self.specs = chosen[:num_prompts]
        self.prompts = [spec_to_prompt(spec) for spec in self.specs]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> str:
        return self.prompts[index]

    def record(self, index: int) -> dict[str, str]:
        """``{'prompt', 'shape', 'colour', 'background', 'size', 'position'}`` of prompt ``index``."""
        spec = self.specs[index]
        return {"prompt": self.prompts[index], **{name: getattr(spec, name) for name in ATTRIBUTES}}
