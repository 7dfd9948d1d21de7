"""Text normalisation for scoring, and script-based language detection of a transcript.

English: OpenAI Whisper's English normaliser (package ``whisper-normalizer``): lower-case, remove
bracketed/filler words, spelling standardisation, numbers to digits, punctuation removed.
Mandarin: NFKC (full-width -> half-width, so full-width digits become ASCII), lower-case, all
punctuation, symbols and white space removed; CER is then computed on characters.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

Language = Literal["en", "zh"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")


@lru_cache(maxsize=1)
def _english_normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper English normaliser, with white space collapsed; a word left with no letter or digit (the normaliser
    keeps a lone '.' of '...', which would score as a one-word reference) is dropped."""
    return " ".join(w for w in _english_normaliser()(text).split() if any(ch.isalnum() for ch in w))


def normalize_mandarin(text: str) -> str:
    """NFKC, lower-case, drop punctuation/symbols/spaces (CER units are the remaining characters)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not (unicodedata.category(ch)[0] in "PSZC" or ch.isspace()))


def normalize(text: str, language: str) -> str:
    if language == "zh":
        return normalize_mandarin(text)
    if language == "en":
        return normalize_english(text)
    raise ValueError(f"no normaliser for language {language!r} (known: en, zh)")


def detect_language(text: str) -> Language:
    """'zh' when CJK characters are at least as many as Latin words, else 'en' (also for empty text).

    A Han character and a Latin word carry about one unit of content each, so code-switched text is
    labelled by its dominant script.
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    return "zh" if cjk > 0 and cjk >= latin else "en"


LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh": "Chinese"}


def units(text: str, language: str) -> list[str]:
    """Scoring units: words for English, characters (spaces removed) for Mandarin."""
    if language == "zh":
        return [c for c in text if not c.isspace()]
    return text.split()
