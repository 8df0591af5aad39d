"""The embedded toy text-to-image world: prompt grammar, renderer, tiny models, shipped weights.

``tools/pretrain_toy.py`` writes the files named here; ``ToyFlowPolicy`` and
``ToyAlignmentReward`` read them.
"""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
GENERATOR_WEIGHTS = WEIGHTS_DIR / "toy_generator.safetensors"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "toy_classifier.safetensors"
CONFIG_FILE = WEIGHTS_DIR / "toy_config.json"
