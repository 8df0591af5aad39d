"""Prompt sources (registry ``DATASETS``): sequences of prompt strings, ``len`` and ``ds[i]``."""
from . import prompt_file, toy
from .prompt_file import PromptFile, PromptList

__all__ = ["PromptFile", "PromptList", "prompt_file", "toy"]
