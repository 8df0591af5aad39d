"""The toy world's prompt grammar: shape specs, their prompt text, parsing and tokenisation.

Every prompt has the same 11-word form::

    a {size} {colour} {shape} on a {background} background {position phrase}

e.g. ``"a small red circle on a blue background at the top"``. The background colour always
differs from the shape's colour, so there are 3 * 6 * 5 * 2 * 5 = 900 distinct specs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# The attributes a classifier predicts, with their allowed values (in head order).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "background": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
}

POSITION_PHRASES: dict[str, tuple[str, str, str]] = {
    "left": ("on", "the", "left"),
    "right": ("on", "the", "right"),
    "top": ("at", "the", "top"),
    "bottom": ("at", "the", "bottom"),
    "center": ("in", "the", "center"),
}

PAD_ID = 0
VOCAB: tuple[str, ...] = (
    "<pad>", "a", "on", "background", "at", "in", "the",
    *SIZES, *COLOURS, *SHAPES, *POSITIONS,
)
WORD_TO_ID: dict[str, int] = {word: index for index, word in enumerate(VOCAB)}
MAX_TOKENS = 12  # every grammar prompt has 11 words; one spare pad
SHOWN_CHARS = 80  # errors echo at most this much of a prompt or word


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``repr`` of ``text`` for an error message: the first ``limit`` characters and the length
    when longer (a 10 MB prompt must not end up in a log line)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class ShapeSpec:
    """One image of the toy world: a single shape on a plain background."""

    shape: str
    colour: str
    background: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for name, allowed in ATTRIBUTES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ShapeSpec.{name}={value!r} is not one of {list(allowed)}")
        if self.colour == self.background:
            raise ValueError(
                f"ShapeSpec.background must differ from colour, both are {self.colour!r}"
            )

    def index(self, attribute: str) -> int:
        """Class index of ``attribute`` (a key of ``ATTRIBUTES``) for this spec."""
        return ATTRIBUTES[attribute].index(getattr(self, attribute))


def all_specs() -> list[ShapeSpec]:
    """All 900 valid specs in a fixed order (shape, colour, background, size, position)."""
    return [
        ShapeSpec(shape, colour, background, size, position)
        for shape in SHAPES
        for colour in COLOURS
        for background in COLOURS
        if background != colour
        for size in SIZES
        for position in POSITIONS
    ]


def spec_to_prompt(spec: ShapeSpec) -> str:
    """``ShapeSpec`` -> its prompt, e.g. ``"a small red circle on a blue background at the top"``."""
    phrase = " ".join(POSITION_PHRASES[spec.position])
    return f"a {spec.size} {spec.colour} {spec.shape} on a {spec.background} background {phrase}"


def _expect(words: list[str], position: int, allowed: tuple[str, ...], what: str, text: str) -> str:
    if position >= len(words):
        raise ValueError(f"prompt {shown(text)} ends early: expected {what} {list(allowed)}")
    word = words[position]
    if word not in allowed:
        raise ValueError(
            f"prompt {shown(text)}: expected {what} {list(allowed)} at word {position + 1}, got {shown(word)}"
        )
    return word


def parse_prompt(text: str) -> ShapeSpec:
    """Inverse of :func:`spec_to_prompt` (case and a trailing period are ignored).

    Raises ValueError naming the first unknown or misplaced word.
    """
    words = text.lower().strip().rstrip(".").split()
    for word in words:
        if word not in WORD_TO_ID or word == "<pad>":
            raise ValueError(f"unknown word {shown(word)} in prompt {shown(text)}; known words: {VOCAB[1:]}")
    _expect(words, 0, ("a",), "the article", text)
    size = _expect(words, 1, SIZES, "a size", text)
    colour = _expect(words, 2, COLOURS, "a colour", text)
    shape = _expect(words, 3, SHAPES, "a shape", text)
    _expect(words, 4, ("on",), "the word", text)
    _expect(words, 5, ("a",), "the article", text)
    background = _expect(words, 6, COLOURS, "a background colour", text)
    _expect(words, 7, ("background",), "the word", text)
    preposition = _expect(words, 8, ("on", "at", "in"), "a preposition", text)
    _expect(words, 9, ("the",), "the word", text)
    position = _expect(words, 10, POSITIONS, "a position", text)
    if POSITION_PHRASES[position][0] != preposition:
        raise ValueError(
            f"prompt {shown(text)}: the position {position!r} is written "
            f"{' '.join(POSITION_PHRASES[position])!r}"
        )
    if len(words) > 11:
        extra = " ".join(words[11:])
        raise ValueError(f"prompt {shown(text)} has extra words after the position: {shown(extra)}")
    return ShapeSpec(shape, colour, background, size, position)


def sample_specs(n: int, generator: torch.Generator | None = None) -> list[ShapeSpec]:
    """``n`` specs drawn uniformly (with replacement) from :func:`all_specs`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    specs = all_specs()
    index = torch.randint(len(specs), (n,), generator=generator)
    return [specs[i] for i in index.tolist()]


def tokenize(prompts: list[str], max_len: int = MAX_TOKENS) -> torch.Tensor:
    """Prompts -> LongTensor [P, max_len] of word ids, right-padded with ``PAD_ID`` (0).

    The empty prompt ``""`` is all padding (the null prompt of classifier-free guidance).
    """
    ids = torch.full((len(prompts), max_len), PAD_ID, dtype=torch.long)
    for row, text in enumerate(prompts):
        words = text.lower().strip().rstrip(".").split()
        if len(words) > max_len:
            raise ValueError(f"prompt {shown(text)} has {len(words)} words, more than max_len={max_len}")
        for col, word in enumerate(words):
            if word not in WORD_TO_ID or word == "<pad>":
                raise ValueError(f"unknown word {shown(word)} in prompt {shown(text)}; known words: {VOCAB[1:]}")
            ids[row, col] = WORD_TO_ID[word]
    return ids
