"""Feedback as comparison groups: one prompt, its distinct responses and the preferences between them.

Every kind of feedback record becomes pairs inside its prompt's group: preference pairs as given, rankings
expanded to all K·(K−1)/2 pairs (tie groups give no pair between their members), ratings turned into pairs
within the prompt (ties dropped) or regressed on z-scored ratings, edits as edited ≻ original. A record's
optional ``weight`` goes with its pairs (a pair of two ratings: the product of theirs). The reward model trains
on groups, and a batch scores each distinct response of a group once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from rlhfkit.data.formats import (detect_kind, feedback_to_pairs, prompt_key, prompt_messages, ratings_to_pairs,
                                  record_weight)


@dataclass
class Group:
    """One prompt's feedback: its distinct responses and the preferences between them (indices)."""

    prompt: dict  # {"prompt"} or {"messages"}
    responses: list[str] = field(default_factory=list)
    # (chosen, rejected, margin, in the BT loss, weight): weight is how much the pair counts in the loss (the record's)
    pairs: list[tuple[int, int, float, bool, float]] = field(default_factory=list)
    targets: dict[int, list[float]] = field(default_factory=dict)  # response index → z-scored ratings (regression)
    target_weights: dict[int, list[float]] = field(default_factory=dict)  # response index → those ratings' weights

    def index(self, response: str) -> int:
        if response not in self.responses:
            self.responses.append(response)
        return self.responses.index(response)


def build_groups(records: list[dict], rating_loss: str = "pairs") -> list[Group]:
    """Feedback records → one Group per prompt (in first-seen order); groups with nothing to learn are dropped.

    Ratings with ``rating_loss="regression"`` become regression targets (ratings z-scored over the file)
    and their within-prompt pairs are kept for accuracy only (not in the Bradley–Terry loss).
    """
    groups: dict[str, Group] = {}
    ratings: dict[str, list[dict]] = {}

    def group(rec: dict) -> Group:
        key = prompt_key(rec)
        if key not in groups:
            groups[key] = Group({"messages": prompt_messages(rec)} if "messages" in rec else {"prompt": rec["prompt"]})
        return groups[key]

    for rec in records:
        g = group(rec)
        if detect_kind(rec) == "rating":
            ratings.setdefault(prompt_key(rec), []).append(rec)
            continue
        for p in feedback_to_pairs([rec]):
            g.pairs.append((g.index(p.chosen), g.index(p.rejected), p.margin, True, p.weight))
    all_scores = [float(r["score"]) for recs in ratings.values() for r in recs]
    mean = sum(all_scores) / max(len(all_scores), 1)
    std = math.sqrt(sum((s - mean) ** 2 for s in all_scores) / max(len(all_scores), 1)) or 1.0
    for key, recs in ratings.items():
        g = groups[key]
        for p in ratings_to_pairs(recs):
            g.pairs.append((g.index(p.chosen), g.index(p.rejected), p.margin, rating_loss == "pairs", p.weight))
        if rating_loss == "regression":
            for r in recs:
                g.targets.setdefault(g.index(r["response"]), []).append((float(r["score"]) - mean) / std)
                g.target_weights.setdefault(g.index(r["response"]), []).append(record_weight(r))
    return [g for g in groups.values() if g.pairs or g.targets]


def gold_groups(records: list[dict], judge: Callable[[list[dict], list[str]], list[float]]) -> list[Group]:
    """Groups from candidates records ordered by a gold judge ``judge(prompts, responses) -> scores``: every
    pair whose gold scores differ."""
    groups = []
    for rec in records:
        responses = list(rec["responses"])
        gold = judge([rec] * len(responses), responses)
        g = Group({"messages": prompt_messages(rec)} if "messages" in rec else {"prompt": rec["prompt"]}, responses)
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if gold[i] != gold[j]:
                    g.pairs.append((i, j, 0.0, True, 1.0) if gold[i] > gold[j] else (j, i, 0.0, True, 1.0))
        if g.pairs:
            groups.append(g)
    return groups


def flatten(groups: list[Group]) -> tuple[list[dict], list[str], list[int]]:
    """All (prompt, response) inputs of some groups, each distinct response once, and each group's offset."""
    prompts, responses, offsets = [], [], []
    for g in groups:
        offsets.append(len(responses))
        prompts.extend([g.prompt] * len(g.responses))
        responses.extend(g.responses)
    return prompts, responses, offsets
