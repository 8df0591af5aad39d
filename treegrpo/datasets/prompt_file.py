"""Prompt sources read from a file (``.txt`` / ``.jsonl``) or listed inline in a config.

Every dataset is a sequence of prompt strings: ``len(ds)`` and ``ds[i] -> str``; a dataset may
also give records ``ds.record(i) -> {'prompt': str, **fields}`` (:func:`dataset_record` falls back
to ``{'prompt': ds[i]}``). A jsonl row keeps all its fields; rewards that accept ``metadata``
receive the fields of each leaf's record.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from treegrpo.registry import DATASETS

SUFFIXES = (".txt", ".jsonl")
MAX_RECORD_BYTES = 64 << 10  # one record as compact JSON


def validate_record(record: Any, where: str) -> dict[str, Any]:
    """Check one record and return a copy with the prompt stripped: a dict with a non-empty
    string 'prompt', every field JSON-serialisable, at most MAX_RECORD_BYTES as JSON.
    ``where`` (e.g. ``"data.jsonl: line 3"``) starts every error message."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be a JSON object with a 'prompt' key, "
                         f"got {type(record).__name__}")
    if "prompt" not in record:
        raise ValueError(f"{where} has no 'prompt' key (keys: {sorted(map(str, record))})")
    prompt = record["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    try:
        size = len(json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: every field must be JSON-serialisable ({err})") from None
    if size > MAX_RECORD_BYTES:
        raise ValueError(f"{where}: the record is {size} bytes as JSON, more than the "
                         f"{MAX_RECORD_BYTES} allowed; keep large data in files and put paths here")
    return {**record, "prompt": prompt.strip()}


def dataset_record(dataset: Any, index: int) -> dict[str, Any]:
    """``dataset.record(index)`` when the dataset has records, else ``{'prompt': dataset[index]}``."""
    record = getattr(dataset, "record", None)
    return dict(record(index)) if callable(record) else {"prompt": dataset[index]}


def split_lines(data: bytes) -> list[bytes]:
    """Raw file bytes -> one bytes object per line, without line endings (``\\n`` or ``\\r\\n``).

    A final line ending does not start a new (empty) line; an empty input has no lines.
    """
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def decode_line(raw: bytes, path: str, line_number: int) -> str:
    """UTF-8 decode one line (a byte-order mark on line 1 is dropped); errors name file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: line {line_number} is not valid UTF-8 "
            f"(byte {err.start}: {raw[err.start:err.start + 1]!r}); save the file as UTF-8"
        ) from None
    if line_number == 1:
        text = text.removeprefix("\ufeff")
    return text


def parse_json_line(text: str, path: str, line_number: int) -> tuple[str, dict[str, Any]]:
    """One ``.jsonl`` line -> (prompt, metadata = every other key); errors name file and line."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {line_number} is not valid JSON ({err.msg})") from None
    record = validate_record(record, f"{path}: line {line_number}")
    return record.pop("prompt"), record


def read_prompt_file(path: str | os.PathLike) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a ``.txt`` (one prompt per line) or ``.jsonl`` (one ``{"prompt": ...}`` per line) file.

    Returns (prompts, metadata): metadata[i] holds the other keys of a jsonl line ({} for txt).
    Raises FileNotFoundError for a missing file and ValueError naming the file and the 1-based
    line number for an empty line, invalid UTF-8, malformed JSON or a missing 'prompt' key.
    """
    file = Path(path)
    if file.suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"path: prompt file {str(file)!r} must end with one of {list(SUFFIXES)}"
        )
    if not file.exists():
        raise FileNotFoundError(f"prompt file not found: {str(file)!r}")
    if not file.is_file():
        raise ValueError(f"path: prompt file {str(file)!r} is not a regular file")
    name = str(file)
    is_jsonl = file.suffix.lower() == ".jsonl"
    prompts: list[str] = []
    metadata: list[dict[str, Any]] = []
    for line_number, raw in enumerate(split_lines(file.read_bytes()), start=1):
        text = decode_line(raw, name, line_number)
        if not text.strip():
            raise ValueError(
                f"{name}: line {line_number} is empty; every line must hold one prompt"
            )
        if is_jsonl:
            prompt, meta = parse_json_line(text, name, line_number)
        else:
            prompt, meta = text.strip(), {}
        prompts.append(prompt)
        metadata.append(meta)
    if not prompts:
        raise ValueError(f"prompt file {name!r} is empty; it must hold at least one prompt")
    return prompts, metadata


class _PromptSequence:
    """Shared sequence behaviour: ``prompts`` list, ``len``, indexing and iteration."""

    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> str:
        return self.prompts[index]

    def record(self, index: int) -> dict[str, Any]:
        """``{'prompt': prompts[index], **metadata[index]}`` (a new dict)."""
        return {"prompt": self.prompts[index], **self.metadata[index]}

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} prompts)"


@DATASETS.register_module()
class PromptFile(_PromptSequence):
    """Prompts read from a ``.txt`` file (one per line) or a ``.jsonl`` file (one JSON object per
    line with a ``"prompt"`` key; other keys are kept in ``metadata[i]``).

    Config: ``dict(type='PromptFile', path='data/prompts.txt')``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path must be a file path string, got {path!r}")
        self.path = str(path)
        self.prompts, self.metadata = read_prompt_file(path)


@DATASETS.register_module()
class PromptList(_PromptSequence):
    """Prompts listed inline in a config: ``dict(type='PromptList', prompts=['a cat', ...])``;
    an entry may be a record ``{'prompt': 'a cat', 'colour': 'red'}`` whose other keys are kept
    in ``metadata[i]``."""

    def __init__(self, prompts: Sequence[str | dict[str, Any]]) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r}")
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one prompt, got an empty list")
        self.prompts, self.metadata = [], []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, dict):
                record = validate_record(prompt, f"prompts[{index}]")
                self.prompts.append(record.pop("prompt"))
                self.metadata.append(record)
                continue
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(
                    f"prompts[{index}] must be a non-empty string or a record dict, got {prompt!r}"
                )
            self.prompts.append(prompt.strip())
            self.metadata.append({})


def read_first_prompts(path: str | os.PathLike, num_prompts: int | None = None) -> list[str]:
    """The prompts of a prompt file (:func:`read_prompt_file`), the first ``num_prompts`` when given
    (ValueError when the file has fewer)."""
    prompts, _ = read_prompt_file(path)
    if num_prompts is None:
        return prompts
    if num_prompts > len(prompts):
        raise ValueError(f"--num-prompts {num_prompts} exceeds the {len(prompts)} prompts of {path}")
    return prompts[:num_prompts]
