"""Prompt-alignment reward of the toy world (a stand-in for CLIPScore).

The shipped attribute classifier reads each image's shape, colour, background, size and
position; the reward is the mean over these attributes of the probability it gives to the
value the prompt asks for, in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import torch

from treegrpo.registry import REWARDS
from treegrpo.rewards.base import Reward, check_images
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
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else CLASSIFIER_WEIGHTS
        self.device = torch.device(device)
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
        return f"ToyAlignmentReward(checkpoint={str(self.checkpoint)!r}, device={str(self.device)!r})"

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = self.attribute_scores(images, prompts)
        return torch.stack(list(scores.values()), dim=1).mean(dim=1)
