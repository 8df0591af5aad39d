"""Prompt datasets: .txt / .jsonl files and inline prompt lists."""
from __future__ import annotations

from pathlib import Path

import pytest

from treegrpo.datasets.prompt_file import PromptFile, PromptList, split_lines
from treegrpo.registry import DATASETS, build


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_split_lines_handles_crlf_and_final_newline():
    assert split_lines(b"") == []
    assert split_lines(b"a\r\nb\n") == [b"a", b"b"]
    assert split_lines(b"a\n\nb") == [b"a", b"", b"b"]


def test_txt_file_one_prompt_per_line(tmp_path):
    path = write(tmp_path, "p.txt", b"a red circle\r\n  a blue square  \nthird\n")
    ds = PromptFile(path)
    assert len(ds) == 3
    assert ds[0] == "a red circle"
    assert ds[1] == "a blue square"
    assert ds[-1] == "third"
    assert list(ds) == ["a red circle", "a blue square", "third"]
    assert ds.metadata == [{}, {}, {}]
    with pytest.raises(IndexError):
        ds[3]


def test_txt_without_final_newline_and_with_bom(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeffune île\nzwei".encode("utf-8"))
    assert list(PromptFile(str(path))) == ["une île", "zwei"]


def test_jsonl_keeps_other_keys_as_metadata(tmp_path):
    lines = b'{"prompt": "a cat", "tag": "animal", "id": 3}\n{"prompt": "a dog"}\n'
    ds = PromptFile(write(tmp_path, "p.jsonl", lines))
    assert list(ds) == ["a cat", "a dog"]
    assert ds.metadata == [{"tag": "animal", "id": 3}, {}]


@pytest.mark.parametrize(
    ("name", "data", "line", "words"),
    [
        ("empty_line.txt", b"a\n\nb\n", 2, "empty"),
        ("blank_line.txt", b"a\nb\n \t \nc\n", 3, "empty"),
        ("not_utf8.txt", b"ok\nfine\nbad \xff\xfe here\n", 3, "UTF-8"),
        ("not_utf8.jsonl", b'{"prompt": "a"}\n\xff\xfe\n', 2, "UTF-8"),
        ("bad_json.jsonl", b'{"prompt": "a"}\n{"prompt": "b",\n', 2, "JSON"),
        ("no_prompt.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"text": "c"}\n', 3, "'prompt'"),
        ("not_object.jsonl", b'["a", "b"]\n', 1, "JSON object"),
        ("bad_prompt.jsonl", b'{"prompt": "a"}\n{"prompt": 7}\n', 2, "non-empty string"),
        ("blank_prompt.jsonl", b'{"prompt": "  "}\n', 1, "non-empty string"),
        ("empty_line.jsonl", b'{"prompt": "a"}\n\n', 2, "empty"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, name, data, line, words):
    path = write(tmp_path, name, data)
    with pytest.raises(ValueError) as err:
        PromptFile(path)
    message = str(err.value)
    assert f"line {line} " in message or f"line {line}:" in message
    assert str(path) in message
    assert words in message


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        PromptFile(path)


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "empty.jsonl", b"")
    with pytest.raises(ValueError, match="empty"):
        PromptFile(path)


def test_unknown_suffix_names_path_and_allowed(tmp_path):
    path = write(tmp_path, "p.csv", b"a\n")
    with pytest.raises(ValueError, match=r"path.*\.txt.*\.jsonl"):
        PromptFile(path)


def test_prompt_file_builds_from_registry(tmp_path):
    path = write(tmp_path, "p.txt", b"x\ny\n")
    ds = build(DATASETS, dict(type="PromptFile", path=str(path)))
    assert isinstance(ds, PromptFile)
    assert list(ds) == ["x", "y"]


def test_prompt_list_validates_and_indexes():
    ds = build(DATASETS, dict(type="PromptList", prompts=["a cat", " a dog "]))
    assert isinstance(ds, PromptList)
    assert len(ds) == 2
    assert ds[1] == "a dog"


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], "at least one"),
        ("a cat", "list of strings"),
        (["a cat", ""], r"prompts\[1\]"),
        (["a cat", "ok", 3], r"prompts\[2\]"),
    ],
)
def test_prompt_list_rejects_bad_prompts(prompts, match):
    with pytest.raises(ValueError, match=match):
        PromptList(prompts)
