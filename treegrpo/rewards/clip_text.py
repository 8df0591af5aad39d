"""The text cleaning of OpenAI CLIP's and open_clip's tokenizers, for transformers CLIP tokenizers.

OpenAI ``clip.simple_tokenizer`` (CLIPScore) and the open_clip tokenizer that hpsv2 bundles
(HPS-v2) clean every text before byte-pair encoding: ``ftfy.fix_text`` (mojibake, curly quotes,
HTML entities, NFC), ``html.unescape`` twice, strip, every run of whitespace to one space, lower
case. The tokenizers-backed CLIP tokenizer of transformers (what ``AutoTokenizer`` loads) only
normalises whitespace and case, so ``&amp;``, curly quotes or mojibake give other token ids than
the official rewards see. :func:`clean_clip_text` applies the official cleaning first.
"""
from __future__ import annotations

import html
import re
from types import ModuleType

WHITESPACE = re.compile(r"\s+")


def require_ftfy() -> ModuleType:
    """The ``ftfy`` module; ImportError naming the package and the install command if missing."""
    try:
        import ftfy
    except ImportError as error:
        raise ImportError("HPSv2 and CLIPScore clean prompts with the ftfy package, as the official "
                          "tokenizers do, and it is not installed: pip install ftfy (a core "
                          "dependency of treegrpo)") from error
    return ftfy


def clean_clip_text(text: str) -> str:
    """``text`` as OpenAI CLIP / open_clip clean it before tokenizing (see the module docstring)."""
    text = require_ftfy().fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return WHITESPACE.sub(" ", text).strip().lower()
