"""Gold judges: known preference functions (text → score) that stand in for people.

A judge scores a batch of responses to prompt records (the records may carry extra fields a judge
uses, such as a tutor prompt's ``keywords``). Simulated annotators (``feedback/simulate.py``) turn
these scores into human-like feedback; PPO can also optimise a judge directly (``--reward judge:NAME``)
and evaluation reports the gold score of each checkpoint.

Add a judge with ``@register("name")`` on a function ``(prompts, responses) -> list[float]``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from rlhfkit.data.formats import prompt_text

JudgeFn = Callable[[list[dict], list[str]], list[float]]
JUDGES: dict[str, JudgeFn] = {}


def register(name: str) -> Callable[[JudgeFn], JudgeFn]:
    def wrap(fn: JudgeFn) -> JudgeFn:
        JUDGES[name] = fn
        return fn

    return wrap


def get_judge(name: str) -> JudgeFn:
    """The judge called ``name``; an unknown name lists the known ones."""
    _load_builtin_judges()
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}")
    return JUDGES[name]


def _load_builtin_judges() -> None:
    """Judges defined in other modules register themselves on import."""
    import importlib

    for module in ("rlhfkit.judges.recipes",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@register("sentiment")
def sentiment(prompts: list[dict], responses: list[str]) -> list[float]:
    """VADER compound score (−1 … 1) of the prompt's opening continued by the response."""
    analyzer = _vader()
    return [analyzer.polarity_scores(f"{prompt_text(p)} {r}")["compound"] for p, r in zip(prompts, responses)]


@register("length")
def length(prompts: list[dict], responses: list[str]) -> list[float]:
    """Number of words (a trivial judge for tests: longer is better)."""
    return [float(len(r.split())) for r in responses]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e (textstat needs an NLTK download; this runs offline)."""
    groups = re.findall(r"[aeiouy]+", word.lower())
    n = len(groups)
    if word.lower().endswith("e") and not word.lower().endswith(("le", "ee")) and n > 1:
        n -= 1
    return max(n, 1)


def reading_grade(text: str) -> float:
    """Flesch–Kincaid grade level: 0.39·words/sentences + 11.8·syllables/word − 15.59."""
    words = _words(text)
    if not words:
        return 0.0
    sentences = max(len(re.findall(r"[.!?]+(?:\s|$)", text.strip() + " ")), 1)
    return 0.39 * len(words) / sentences + 11.8 * sum(syllables(w) for w in words) / len(words) - 15.59


def keyword_coverage(text: str, keywords: list[str]) -> float:
    """Share of keywords mentioned; a keyword matches when each of its words' stems starts a word of the text."""
    if not keywords:
        return 0.0
    words = _words(text)

    def mentioned(keyword: str) -> bool:
        return all(any(w.startswith(k[: max(4, len(k) - 2)]) for w in words) for k in _words(keyword))

    return sum(mentioned(k) for k in keywords) / len(keywords)
