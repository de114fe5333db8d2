"""Agreement between annotators and merging of several rankings: pure functions, no database.

- Krippendorff's alpha (nominal or interval) over units coded by any number of annotators, missing allowed.
- Pairwise agreement: the fraction of annotator pairs, over all units, that gave the same value; and of two
  answers to one task (:func:`answer_agreement`), which per-annotator agreement and review use.
- Bradley–Terry merge of several (partial, tied) rankings of one task into one ranking.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from itertools import combinations
from typing import Hashable, Optional, Sequence

Ranking = list[list[int]]  # groups of response positions, best first; a group of several is a tie


def _delta(a, b, metric: str) -> float:
    if metric == "nominal":
        return 0.0 if a == b else 1.0
    if metric == "interval":
        return float(a - b) ** 2
    raise ValueError(f"unknown metric {metric!r}; expected nominal or interval")


def krippendorff_alpha(units: Sequence[Sequence[Hashable]], metric: str = "nominal") -> Optional[float]:
    """Alpha = 1 − D_o / D_e over the values each unit got (one per annotator who coded it).

    Units with fewer than 2 values carry no pairing information and are left out (Krippendorff 2011).
    Returns None when there is nothing to compare or every value is the same (alpha undefined).
    """
    units = [list(u) for u in units if len(u) >= 2]
    n = sum(len(u) for u in units)
    if n < 2:
        return None
    observed = 0.0
    for u in units:
        observed += sum(_delta(a, b, metric) for a, b in combinations(u, 2)) * 2 / (len(u) - 1)
    observed /= n
    counts = Counter(v for u in units for v in u)
    values = list(counts)
    expected = sum(counts[a] * counts[b] * _delta(a, b, metric) for a, b in combinations(values, 2)) * 2
    expected /= n * (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def pairwise_agreement(units: Sequence[Sequence[Hashable]]) -> Optional[float]:
    """Fraction of same-unit annotator pairs that agree exactly; None without any pair."""
    agree = total = 0
    for u in units:
        for a, b in combinations(u, 2):
            agree += a == b
            total += 1
    return agree / total if total else None


def unit_value(kind: str, payload: dict):
    """What an answer of ``kind`` says, as agreement compares it: a rating's score, a comparison's better position
    (or "tie"), an arena answer's better position (or "tie", "both_bad"), an edit's text, a thumb (up or down)."""
    return {"rate": lambda: payload["score"], "compare": lambda: "tie" if payload["better"] is None else payload["better"],
            "arena": lambda: payload["choice"] if payload["better"] is None else payload["better"],
            "edit": lambda: payload["edited"], "thumbs": lambda: payload["thumb"]}[kind]()


def answer_agreement(kind: str, a: dict, b: dict) -> list[float]:
    """How far two answers (payloads) to one task agree: one value in [0, 1] per compared unit, as the per-kind
    agreement counts them (a ranking: one per response pair both placed; an edit: the text similarity)."""
    if kind == "rank":
        pa, pb = pair_preferences(a["ranking"]), pair_preferences(b["ranking"])
        return [float(pa[k] == pb[k]) for k in pa if k in pb]
    if kind == "edit":
        return [difflib.SequenceMatcher(None, a["edited"], b["edited"]).ratio()]
    return [float(unit_value(kind, a) == unit_value(kind, b))]


def pair_preferences(ranking: Ranking) -> dict[tuple[int, int], str]:
    """For each pair i < j of ranked positions: "i" (i better), "j" (j better) or "tie"."""
    place = {j: p for p, g in enumerate(ranking) for j in g}
    out = {}
    for i, j in combinations(sorted(place), 2):
        out[(i, j)] = "tie" if place[i] == place[j] else ("i" if place[i] < place[j] else "j")
    return out


def ranking_units(rankings: Sequence[Ranking]) -> list[list[str]]:
    """One unit per response pair; its values are the annotators' preferences on that pair."""
    by_pair: dict[tuple[int, int], list[str]] = {}
    for r in rankings:
        for pair, pref in pair_preferences(r).items():
            by_pair.setdefault(pair, []).append(pref)
    return list(by_pair.values())


def bradley_terry(rankings: Sequence[Ranking], prior: float = 0.1, iters: int = 200,
                  weights: Optional[Sequence[float]] = None) -> dict[int, float]:
    """Strengths (log scale) of every ranked position from several rankings (Hunter 2004 MM updates).

    Each ranking contributes a win for every ordered pair and half a win each way for a tie, times its weight
    (``weights``, one per ranking; default 1); ``prior`` pseudo-wins each way between every pair keep strengths
    finite when one response always wins.
    """
    items = sorted({j for r in rankings for g in r for j in g})
    if not items:
        return {}
    wins = {(a, b): prior for a in items for b in items if a != b}
    for r, weight in zip(rankings, weights if weights is not None else [1.0] * len(rankings), strict=True):
        for (i, j), pref in pair_preferences(r).items():
            if pref == "tie":
                wins[(i, j)] += 0.5 * weight
                wins[(j, i)] += 0.5 * weight
            else:
                w, l = (i, j) if pref == "i" else (j, i)
                wins[(w, l)] += weight
    p = {a: 1.0 for a in items}
    for _ in range(iters):
        new = {}
        for a in items:
            total_wins = sum(wins[(a, b)] for b in items if b != a)
            denom = sum((wins[(a, b)] + wins[(b, a)]) / (p[a] + p[b]) for b in items if b != a)
            new[a] = total_wins / denom if denom else p[a]
        norm = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        p = {a: v / norm for a, v in new.items()}
    return {a: math.log(v) for a, v in p.items()}


def merge_rankings(rankings: Sequence[Ranking], tol: float = 1e-6, weights: Optional[Sequence[float]] = None) -> Ranking:
    """One ranking from several (each counting its weight): sort by Bradley–Terry strength; equal strengths stay tied."""
    strength = bradley_terry(rankings, weights=weights)
    merged: Ranking = []
    for a in sorted(strength, key=lambda a: (-strength[a], a)):
        if merged and abs(strength[merged[-1][0]] - strength[a]) < tol:
            merged[-1].append(a)
        else:
            merged.append([a])
    return merged
