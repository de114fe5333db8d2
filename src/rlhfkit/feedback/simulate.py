"""Simulated annotators: a gold judge's scores turned into human-like feedback (docs/design.md §3 records).

Noise model (one for every kind of feedback):
- an annotator *perceives* each response's quality as u = g + T·Gumbel(0, 1), where g is the gold score
  and T the temperature. Picking the larger u is exactly Bradley–Terry, P(a≻b) = σ((g_a − g_b)/T);
  sorting by u is Plackett–Luce. T = 0 perceives the gold scores themselves;
- each choice is then reversed with probability ``flip_rate`` (a careless click): compare swaps the pair,
  rank swaps each adjacent pair, rate draws a uniform 1–7 score, thumbs tosses a coin, edit keeps the shown response;
- an edit is the best other candidate (``edit_to: best``: it stands in for a person's rewrite), or the prompt
  record's reference (``edit_to: reference``: a transcriber who listens to the clip and types what was said), each
  of its words wrong with probability ``edit_error_rate`` (replaced by the shown response's word in that place,
  or left out where the response has none);
- each annotator has a rating bias (points on the 1–7 scale, drawn from N(0, bias_std)): lenient or
  harsh raters, which changes ratings but not orderings.
With T = 0, flip_rate = 0 and bias_std = 0 the feedback reproduces the gold ordering exactly.

Ties: perceived scores within ``tie_margin`` of each other are a tie. A tied compare is skipped (a
preference record cannot say "equal"); in a ranking tied responses share one place (a nested list).
Randomness is seeded per (seed, prompt index, annotator), so the output does not depend on batching.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from rich.console import Console

from rlhfkit.config import SimulateConfig
from rlhfkit.data.formats import read_records, write_records
from rlhfkit.feedback.importer import THUMBS_UP_FROM

console = Console(stderr=True)


def perceive(gold: list[float], temperature: float, rng: np.random.Generator) -> list[float]:
    """Perceived scores u = g + T·Gumbel noise (T = 0: the gold scores)."""
    if temperature <= 0:
        return list(gold)
    return [g + temperature * float(rng.gumbel()) for g in gold]


def rank_order(u: list[float], flip_rate: float, rng: np.random.Generator, tie_margin: float = 0.0) -> list:
    """Indices best first by perceived score, adjacent swaps at ``flip_rate``; near-equal neighbours tied."""
    order = sorted(range(len(u)), key=lambda i: (-u[i], i))
    for j in range(len(order) - 1):
        if flip_rate > 0 and rng.random() < flip_rate:
            order[j], order[j + 1] = order[j + 1], order[j]
    places: list[list[int]] = []
    for i in order:
        if places and abs(u[places[-1][-1]] - u[i]) <= tie_margin:
            places[-1].append(i)
        else:
            places.append([i])
    return [p[0] if len(p) == 1 else sorted(p) for p in places]


def to_rating(u: float, lo: float, hi: float, bias: float) -> int:
    """A perceived score on the gold range [lo, hi] → a 1–7 rating, shifted by the annotator's bias."""
    x = 1.0 + 6.0 * (u - lo) / (hi - lo) if hi > lo else 4.0
    return int(min(7, max(1, round(x + bias))))


def annotator_biases(n: int, bias_std: float, seed: int) -> list[float]:
    rng = np.random.default_rng([seed, 7919])
    return [float(b) for b in rng.normal(0.0, bias_std, size=n)] if bias_std > 0 else [0.0] * n


def prompt_fields(rec: dict) -> dict:
    return {"messages": rec["messages"]} if "messages" in rec else {"prompt": rec["prompt"]}


def simulate_prompt(rec: dict, gold: list[float], kind: str, cfg: SimulateConfig, rng: np.random.Generator,
                    name: str, bias: float, lo: float, hi: float) -> list[dict]:
    """One annotator's feedback on one candidates record (a list: rate gives K records, compare may give none)."""
    responses = rec["responses"]
    u = perceive(gold, cfg.temperature, rng)
    base = prompt_fields(rec)
    if kind == "rank":
        return [{**base, "responses": responses, "ranking": rank_order(u, cfg.flip_rate, rng, cfg.tie_margin), "annotator": name}]
    if kind == "rate":
        out = []
        for resp, ui in zip(responses, u):
            careless = cfg.flip_rate > 0 and rng.random() < cfg.flip_rate
            score = int(rng.integers(1, 8)) if careless else to_rating(ui, lo, hi, bias)
            out.append({**base, "response": resp, "score": score, "annotator": name})
        return out
    if kind == "compare":
        pairs = list(combinations(range(len(responses)), 2))
        picked = rng.permutation(len(pairs))[: max(1, cfg.compare_pairs)]
        out = []
        for p in sorted(picked):
            a, b = pairs[p]
            if abs(u[a] - u[b]) <= cfg.tie_margin:
                continue  # a tie: no preference record (documented above)
            win, lose = (a, b) if u[a] > u[b] else (b, a)
            if cfg.flip_rate > 0 and rng.random() < cfg.flip_rate:
                win, lose = lose, win
            margin = abs(to_rating(u[win], lo, hi, 0.0) - to_rating(u[lose], lo, hi, 0.0))
            out.append({**base, "chosen": responses[win], "rejected": responses[lose], "margin": float(margin), "annotator": name})
        return out
    if kind == "thumbs":  # up for a perceived rating of 4 (acceptable) or more; a careless click is a coin toss
        out = []
        for resp, ui in zip(responses, u):
            careless = cfg.flip_rate > 0 and rng.random() < cfg.flip_rate
            up = bool(rng.random() < 0.5) if careless else to_rating(ui, lo, hi, bias) >= THUMBS_UP_FROM
            out.append({**base, "completion": resp, "label": up, "annotator": name})
        return out
    if kind == "edit" and cfg.edit_to == "reference":
        # The annotator is shown the first candidate and types what it should have been: the reference, with
        # a person's slips. A shown response that already is the reference is left unedited.
        reference = rec.get("reference")
        if not (isinstance(reference, str) and reference.strip()):
            raise ValueError(f"edit_to reference: candidates record {rec.get('id', '')!r} has no \"reference\" "
                             "to edit towards (the prompt records must carry one)")
        edited = with_slips(reference, responses[0], cfg.edit_error_rate, rng)
        return [{**base, "response": responses[0], "edited": edited, "annotator": name}]
    if kind == "edit":
        # The annotator is shown the first candidate; "rewriting" it means picking the best of the others
        # (extra samples stand in for a person's rewrite). A shown response judged best is left unedited.
        best = max(range(1, len(responses)), key=lambda i: u[i]) if len(responses) > 1 else 0
        improve = best != 0 and u[best] > u[0] and not (cfg.flip_rate > 0 and rng.random() < cfg.flip_rate)
        edited = responses[best] if improve else responses[0]
        return [{**base, "response": responses[0], "edited": edited if edited.strip() else responses[0], "annotator": name}]
    raise ValueError(f"kind: expected rate|rank|compare|edit|thumbs, got {kind!r}")


def with_slips(reference: str, shown: str, error_rate: float, rng: np.random.Generator) -> str:
    """``reference`` as a person types it: each word, with probability ``error_rate``, replaced by the shown
    response's word in that place (a mishearing the response suggested) or, past the response's end, left out."""
    words, heard = reference.split(), shown.split()
    out = []
    for i, w in enumerate(words):
        if error_rate > 0 and rng.random() < error_rate:
            if i < len(heard):
                out.append(heard[i])
            continue
        out.append(w)
    return " ".join(out) if out else reference


def simulate_feedback(cfg: SimulateConfig) -> list[dict]:
    """Gold-score every candidate with ``cfg.judge`` and write the simulated annotators' feedback."""
    from rlhfkit.judges import get_judge

    if cfg.annotators < 1 or not 1 <= cfg.per_prompt <= cfg.annotators:
        raise ValueError(f"per_prompt: expected 1..annotators ({cfg.annotators}), got {cfg.per_prompt}")
    judge = get_judge(cfg.judge)
    records = read_records(cfg.candidates, "candidates")
    flat_prompts = [rec for rec in records for _ in rec["responses"]]
    flat = judge(flat_prompts, [r for rec in records for r in rec["responses"]])
    golds, at = [], 0
    for rec in records:
        golds.append([float(x) for x in flat[at:at + len(rec["responses"])]])
        at += len(rec["responses"])
    finite = [g for g in flat if math.isfinite(g)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    biases = annotator_biases(cfg.annotators, cfg.bias_std, cfg.seed)
    out: list[dict] = []
    for i, (rec, gold) in enumerate(zip(records, golds)):
        for j in range(cfg.per_prompt):
            a = (i * cfg.per_prompt + j) % cfg.annotators
            rng = np.random.default_rng([cfg.seed, i, a])
            out.extend(simulate_prompt(rec, gold, cfg.kind, cfg, rng, f"sim-{a}", biases[a], lo, hi))
    write_records(cfg.output, out)
    console.print(f"simulate: {len(records)} prompts → {len(out)} {cfg.kind} records from {cfg.annotators} "
                  f"annotator(s) (judge {cfg.judge}, T={cfg.temperature}, flip={cfg.flip_rate}) in {cfg.output}")
    return out
