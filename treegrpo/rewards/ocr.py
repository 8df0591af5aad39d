"""Text-rendering reward: how close the text an OCR engine reads in an image is to the target
text of the image's prompt record.

score = 1 - edit_distance(read, target) / max(len(read), len(target)), both normalised first
(:func:`normalise_text`: lower case unless ``case_sensitive``, runs of whitespace -> one space,
ends stripped, punctuation removed when ``ignore_punctuation``); two empty strings score 1.

The engine is pluggable (registry ``OCR_ENGINES``): ``engine(images [L, 3, H, W] in [0, 1]) ->
L strings``. ``FixedTextEngine`` answers given strings (tests); ``RapidOCREngine`` runs
rapidocr-onnxruntime (``pip install -e ".[ocr]"``) on local ONNX files only.

Config example::

    reward = dict(type='OCRReward', text_key='text',
                  engine=dict(type='RapidOCREngine', det_model_path='/models/det.onnx',
                              rec_model_path='/models/rec.onnx'))
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from treegrpo.registry import OCR_ENGINES, REWARDS, build
from treegrpo.rewards.base import Reward, check_images, check_metadata
from treegrpo.rewards.image_stats import to_uint8

MAX_TEXT_CHARS = 2000  # target and read text are cut here (edit distance is quadratic)
SHOWN_CHARS = 60
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_text(text: str, case_sensitive: bool = False, ignore_punctuation: bool = False) -> str:
    """Lower-case (unless ``case_sensitive``), drop ASCII punctuation if ``ignore_punctuation``,
    collapse whitespace runs to one space and strip the ends."""
    if not case_sensitive:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: fewest single-character insertions, deletions and substitutions
    turning ``a`` into ``b`` (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def text_similarity(read: str, target: str) -> float:
    """1 - edit_distance / max(len): 1 for equal strings (also both empty), 0 for nothing shared."""
    longest = max(len(read), len(target))
    return 1.0 if longest == 0 else 1.0 - edit_distance(read, target) / longest


@OCR_ENGINES.register_module()
class FixedTextEngine:
    """A fake engine for tests: ``engine(images [L, ...]) -> texts[i % len(texts)]`` for image i.
    ``calls`` counts the calls."""

    def __init__(self, texts: list[str]) -> None:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"FixedTextEngine texts must be a non-empty list of strings, got {texts!r}")
        self.texts, self.calls = list(texts), 0

    def __call__(self, images: torch.Tensor) -> list[str]:
        self.calls += 1
        return [self.texts[i % len(self.texts)] for i in range(images.shape[0])]


def _model_file(value: Any, key: str) -> Path:
    """The local ONNX file named by ``key``; ValueError naming the key and the fix otherwise."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError(f"RapidOCREngine {key} must be the path of a local .onnx file, got {value!r}; "
                         f"nothing is downloaded: copy the PP-OCR ONNX models to this machine and set {key}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"RapidOCREngine {key}={str(value)!r} is not a file; nothing is downloaded: "
                         f"copy the PP-OCR ONNX model there or point {key} at it")
    return path


@OCR_ENGINES.register_module()
class RapidOCREngine:
    """rapidocr-onnxruntime (extra ``ocr``) on local PP-OCR ONNX files: the texts found in one
    image, in the engine's reading order, joined by spaces.

    Args:
        det_model_path, rec_model_path: text detection / recognition ONNX files (required).
        cls_model_path: optional text-direction classifier ONNX file (None: not used).
        min_score: recognitions below this confidence are dropped.
    """

    def __init__(self, det_model_path: str, rec_model_path: str, cls_model_path: str | None = None,
                 min_score: float = 0.5) -> None:
        self.paths = {"det_model_path": _model_file(det_model_path, "det_model_path"),
                      "rec_model_path": _model_file(rec_model_path, "rec_model_path")}
        if cls_model_path is not None:
            self.paths["cls_model_path"] = _model_file(cls_model_path, "cls_model_path")
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
            raise ValueError(f"RapidOCREngine min_score must be a number in [0, 1], got {min_score!r}")
        self.min_score = float(min_score)
        self._engine = None

    def load(self) -> "RapidOCREngine":
        """Create the ONNX sessions (ImportError naming the extra if the package is missing)."""
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as err:
                raise ImportError(f"RapidOCREngine needs rapidocr-onnxruntime: pip install -e \".[ocr]\" ({err})") from None
            options = {key: str(path) for key, path in self.paths.items()}
            self._engine = RapidOCR(use_cls="cls_model_path" in options, **options)
        return self

    def __call__(self, images: torch.Tensor) -> list[str]:
        self.load()
        texts = []
        for pixels in to_uint8(images).numpy():
            result, _ = self._engine(Image.fromarray(pixels))
            words = [item[1] for item in result or [] if float(item[2]) >= self.min_score]
            texts.append(" ".join(words))
        return texts


@REWARDS.register_module()
class OCRReward(Reward):
    """``reward(images [L, 3, H, W] in [0, 1], prompts [L], metadata [L dicts]) -> [L] float32``
    in [0, 1]: :func:`text_similarity` of the normalised OCR reading and ``metadata[i][text_key]``.

    Args:
        engine: OCR engine config (``dict(type=...)`` in ``OCR_ENGINES``) or an engine object.
        text_key: metadata key holding the target text.
        case_sensitive, ignore_punctuation: see :func:`normalise_text`.
    """

    def __init__(self, engine: Any, text_key: str = "text", case_sensitive: bool = False,
                 ignore_punctuation: bool = False) -> None:
        if not isinstance(text_key, str) or not text_key:
            raise ValueError(f"OCRReward text_key must be a non-empty string, got {text_key!r}")
        for key, value in (("case_sensitive", case_sensitive), ("ignore_punctuation", ignore_punctuation)):
            if not isinstance(value, bool):
                raise ValueError(f"OCRReward {key} must be True or False, got {value!r}")
        if isinstance(engine, dict):
            engine = build(OCR_ENGINES, engine)
        if not callable(engine):
            raise ValueError(f"OCRReward engine must be a dict(type=...) naming one of "
                             f"{sorted(OCR_ENGINES.module_dict)} or a callable, got {engine!r}")
        self.engine, self.text_key = engine, text_key
        self.case_sensitive, self.ignore_punctuation = case_sensitive, ignore_punctuation
        self.last_texts: list[str] = []

    def load(self) -> "OCRReward":
        if callable(getattr(self.engine, "load", None)):
            self.engine.load()
        return self

    def targets(self, metadata: list[dict] | None, count: int) -> list[str]:
        """The ``count`` target texts from the metadata; ValueError naming the missing one."""
        if metadata is None:
            raise ValueError(f"OCRReward needs metadata with the target text under {self.text_key!r} "
                             f"(a jsonl prompt file with a {self.text_key!r} field per row)")
        texts = []
        for i, meta in enumerate(check_metadata(metadata, count, self.name)):
            value = meta.get(self.text_key)
            if not isinstance(value, str):
                raise ValueError(f"OCRReward: metadata[{i}] has no string {self.text_key!r} (keys: "
                                 f"{sorted(meta)[:10]}); add the target text to each prompt record "
                                 f"or set text_key to the field that holds it")
            texts.append(value[:MAX_TEXT_CHARS])
        return texts

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> torch.Tensor:
        check_images(images, prompts, self.name)
        targets = self.targets(metadata, len(prompts))
        read = self.engine(images)
        if not isinstance(read, (list, tuple)) or len(read) != len(prompts) or not all(isinstance(t, str) for t in read):
            raise ValueError(f"OCRReward: the engine must return {len(prompts)} strings, got {str(read)[:SHOWN_CHARS]!r}")
        self.last_texts = [t[:MAX_TEXT_CHARS] for t in read]
        options = dict(case_sensitive=self.case_sensitive, ignore_punctuation=self.ignore_punctuation)
        scores = [text_similarity(normalise_text(r, **options), normalise_text(t, **options))
                  for r, t in zip(self.last_texts, targets)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def __repr__(self) -> str:
        return (f"OCRReward(engine={type(self.engine).__name__}, text_key={self.text_key!r}, "
                f"case_sensitive={self.case_sensitive}, ignore_punctuation={self.ignore_punctuation})")
