"""Prompt sources (registry ``DATASETS``): sequences of prompt strings, ``len`` and ``ds[i]``;
``ds.record(i)`` gives ``{'prompt', **fields}`` (see :func:`dataset_record`)."""
from . import prompt_file, toy
from .prompt_file import PromptFile, PromptList, dataset_record, validate_record

__all__ = ["PromptFile", "PromptList", "dataset_record", "prompt_file", "toy", "validate_record"]
