"""Agreement measures and the merging of several annotators' rankings."""

from __future__ import annotations

import math

import pytest

from rlhfkit.feedback.agreement import (
    bradley_terry,
    krippendorff_alpha,
    merge_rankings,
    pair_preferences,
    pairwise_agreement,
    ranking_units,
)

# Krippendorff's reliability data example (3 coders, 15 units, missing values); reference values from the
# `krippendorff` package: nominal 0.691358..., interval 0.810844...
CODERS = [[None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
          [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
          [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4]]
UNITS = [[c[u] for c in CODERS if c[u] is not None] for u in range(15)]


def test_krippendorff_alpha_matches_the_reference_values():
    assert krippendorff_alpha(UNITS, "nominal") == pytest.approx(0.691358024691358)
    assert krippendorff_alpha(UNITS, "interval") == pytest.approx(0.8108448928121059)


def test_alpha_is_1_for_perfect_agreement_and_undefined_without_variation():
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3, 3]], "nominal") == 1.0
    assert krippendorff_alpha([[1, 1], [1, 1]]) is None
    assert krippendorff_alpha([[1], [2]]) is None  # no unit coded twice


def test_pairwise_agreement_counts_agreeing_annotator_pairs():
    assert pairwise_agreement([["a", "a", "b"], ["x", "x"]]) == pytest.approx(2 / 4)
    assert pairwise_agreement([["a"]]) is None


def test_pair_preferences_of_a_ranking_with_a_tie_and_an_unranked_response():
    assert pair_preferences([[2], [0, 1]]) == {(0, 1): "tie", (0, 2): "j", (1, 2): "j"}  # response 3 unranked


def test_ranking_units_pair_up_only_responses_both_annotators_ranked():
    units = ranking_units([[[0], [1], [2]], [[1], [0]]])
    assert sorted(map(sorted, units)) == [["i"], ["i"], ["i", "j"]]


def test_merging_agreeing_rankings_keeps_their_order():
    assert merge_rankings([[[2], [0], [1]]] * 3) == [[2], [0], [1]]


def test_merging_lets_the_majority_decide_and_keeps_full_ties():
    merged = merge_rankings([[[0], [1], [2]], [[0], [1], [2]], [[1], [0], [2]]])
    assert merged == [[0], [1], [2]]
    assert merge_rankings([[[0, 1]], [[0, 1]]]) == [[0, 1]]


def test_bradley_terry_strength_grows_with_wins():
    s = bradley_terry([[[0], [1]]] * 4 + [[[1], [0]]])
    assert s[0] > s[1] and math.isfinite(s[0])
    always = bradley_terry([[[0], [1]]] * 20)
    assert always[0] - always[1] > s[0] - s[1]  # the prior keeps it finite, but more wins → larger gap
