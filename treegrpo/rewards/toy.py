"""Prompt-alignment reward of the toy world (a stand-in for CLIPScore).

The shipped attribute classifier reads each image's shape, colour, background, size and
position; the reward is the mean over these attributes of the probability it gives to the
value the prompt asks for, in [0, 1] (the quick task), or with ``reduction='product'`` their
product, the classifier's probability that every attribute is right (the strict task, which
the base generator mostly fails: ~0.13 on the eval split against ~1.0 for clean renders). :class:`ToyMetadataReward` scores the attributes given in
each prompt record's metadata instead of parsing the prompt.
"""
from __future__ import annotations

from pathlib import Path

import torch

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, check_images, check_metadata
from treegrpo.toy import CLASSIFIER_WEIGHTS
from treegrpo.toy.models import ToyClassifier, attribute_probabilities, load_models, spec_targets
from treegrpo.toy.prompts import ATTRIBUTES, parse_prompt


@REWARDS.register_module()
class ToyAlignmentReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L]) -> [L] float32`` in [0, 1].

    Args:
        checkpoint: classifier safetensors (None: the shipped
            ``treegrpo/toy/weights/toy_classifier.safetensors``), loaded on first use.
        device: where the classifier runs; the result is returned on the images' device.
        reduction: how the per-attribute probabilities [L, A] become one score: ``'mean'``
            (partial credit) or ``'product'`` (all attributes right).
        attributes: which attributes are scored (default: all of ``ATTRIBUTES``), e.g.
            ``['shape', 'position']``, the two the shipped generator gets wrong most.
    """

    REDUCTIONS = ("mean", "product")

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                 reduction: str = "mean", attributes: tuple[str, ...] | list[str] | None = None) -> None:
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(self.REDUCTIONS)}, got {reduction!r}")
        attributes = tuple(ATTRIBUTES) if attributes is None else tuple(attributes)
        unknown = [name for name in attributes if name not in ATTRIBUTES]
        if not attributes or unknown or len(set(attributes)) != len(attributes):
            raise ValueError(f"attributes must be a non-empty list of distinct names from {list(ATTRIBUTES)}, "
                             f"got {list(attributes)}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else CLASSIFIER_WEIGHTS
        self.device = torch.device(device)
        self.reduction = reduction
        self.attributes = attributes
        self._model: ToyClassifier | None = None

    @property
    def model(self) -> ToyClassifier:
        """The classifier, loaded on first access (FileNotFoundError if the file is missing)."""
        if self._model is None:
            model = load_models(self.checkpoint, ("classifier",), self.device)["classifier"]
            self._model = model.requires_grad_(False).eval()
        return self._model

    @torch.no_grad()
    def attribute_scores(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per attribute, the probability [L] (float32, images' device) of the prompt's value."""
        check_images(images, prompts, self.name)
        targets = spec_targets([parse_prompt(p) for p in prompts])
        logits = self.model(images.to(self.device, torch.float32))
        probs = attribute_probabilities(logits, targets).to(images.device)
        return {name: probs[:, a] for a, name in enumerate(ATTRIBUTES)}

    def __repr__(self) -> str:
        return (f"ToyAlignmentReward(checkpoint={str(self.checkpoint)!r}, device={str(self.device)!r}, "
                f"reduction={self.reduction!r}, attributes={list(self.attributes)})")

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = self.attribute_scores(images, prompts)
        probs = torch.stack([scores[name] for name in self.attributes], dim=1)
        return probs.prod(dim=1) if self.reduction == "product" else probs.mean(dim=1)


METADATA_ALIASES = {"color": "colour"}  # accepted spellings of metadata keys


def metadata_targets(metadata: list[dict], attributes: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Metadata dicts (L) -> (targets [L, A] long class indices in ``ATTRIBUTES`` order, 0 where
    absent; mask [L, A] float32, 1 where leaf i's metadata gives attribute a and a is scored).

    Keys are attribute names (``'color'`` is read as ``'colour'``); a value outside the
    attribute's allowed values, or a leaf giving none of ``attributes``, is a ValueError."""
    names = list(ATTRIBUTES)
    targets = torch.zeros(len(metadata), len(names), dtype=torch.long)
    mask = torch.zeros(len(metadata), len(names))
    for i, meta in enumerate(metadata):
        fields = {METADATA_ALIASES.get(key, key): value for key, value in meta.items()}
        for name in attributes:
            if name not in fields:
                continue
            allowed = ATTRIBUTES[name]
            if fields[name] not in allowed:
                raise ValueError(f"ToyMetadataReward: metadata[{i}][{name!r}] = {fields[name]!r} "
                                 f"is not one of {list(allowed)}")
            a = names.index(name)
            targets[i, a], mask[i, a] = allowed.index(fields[name]), 1.0
        if not mask[i].any():
            raise ValueError(f"ToyMetadataReward: metadata[{i}] gives none of the scored attributes "
                             f"{list(attributes)} (keys: {sorted(meta)})")
    return targets, mask


@REWARDS.register_module()
class ToyMetadataReward(ToyAlignmentReward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata [L dicts]) -> [L] float32``
    in [0, 1]: the mean, over the attributes a leaf's metadata gives (e.g. ``{'colour': 'red',
    'shape': 'circle'}``), of the shipped classifier's probability of that value. The prompt
    text is not read: the attributes come from the prompt records only.

    Args:
        checkpoint, device: as :class:`ToyAlignmentReward`.
        attributes: which metadata keys are scored (default: all of ``ATTRIBUTES``).
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                 attributes: tuple[str, ...] | list[str] | None = None) -> None:
        super().__init__(checkpoint, device, attributes=attributes)

    def __repr__(self) -> str:
        return (f"ToyMetadataReward(checkpoint={str(self.checkpoint)!r}, device={str(self.device)!r}, "
                f"attributes={list(self.attributes)})")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        check_images(images, prompts, self.name)
        if metadata is None:
            raise ValueError("ToyMetadataReward needs metadata (one dict per image, e.g. from a "
                             "jsonl prompt file with 'colour' / 'shape' fields)")
        targets, mask = metadata_targets(check_metadata(metadata, len(prompts), self.name), self.attributes)
        logits = self.model(images.to(self.device, torch.float32))
        probs = attribute_probabilities(logits, targets).cpu()
        return ((probs * mask).sum(dim=1) / mask.sum(dim=1)).to(images.device)
