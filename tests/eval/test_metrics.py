import math

import pytest

from rlhfkit.eval import metrics as M


def test_bleu_of_identical_strings_is_100_and_of_disjoint_strings_is_0():
    hyps = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    assert M.bleu(hyps, hyps) == pytest.approx(100.0)
    assert M.bleu(["xx yy zz ww vv"], ["the cat sat on the mat"]) == pytest.approx(0.0)


def test_rouge_of_a_known_pair():
    # "the cat sat on the mat" vs "the cat was on the mat": 5 of 6 unigrams shared; LCS = the cat on the mat (5).
    r = M.rouge(["the cat was on the mat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(5 / 6)
    assert r["rougeL"] == pytest.approx(5 / 6)
    # Bigrams: {the cat, cat was, was on, on the, the mat} vs {the cat, cat sat, sat on, on the, the mat}: 3 of 5.
    assert r["rouge2"] == pytest.approx(3 / 5)


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c → 3 unique of 7; bigrams: ab ba ab | ab bc → 3 unique (ab, ba, bc) of 5.
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert M.distinct_n([""], 2) == 0.0


def test_win_rate_counts_a_tie_as_half_a_win():
    r = M.win_rate([2.0, 1.0, 1.0, 0.0], [1.0, 1.0, 2.0, 0.0], n_boot=200)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (1, 2, 1, 4)
    assert r["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    # A tolerance turns near-equal scores into ties.
    assert M.win_rate([1.0, 1.05], [1.04, 1.0], tie_tol=0.1, n_boot=50)["ties"] == 2


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_prompts():
    small = M.win_rate([1, 0] * 10, [0, 1] * 10, n_boot=500)
    large = M.win_rate([1, 0] * 200, [0, 1] * 200, n_boot=500)
    for r in (small, large):
        lo, hi = r["ci"]
        assert lo <= r["win_rate"] <= hi
    assert (large["ci"][1] - large["ci"][0]) < 0.5 * (small["ci"][1] - small["ci"][0])


def test_sampled_kl_sums_over_tokens_and_averages_over_answers():
    logp = [[-1.0, -2.0], [-0.5]]
    ref = [[-1.5, -2.5], [-1.5]]
    assert M.sequence_kl(logp, ref) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert M.sampled_kl([[-1.0, -2.0], [-0.5]], [[-1.0, -3.0], [-0.5]]) == pytest.approx(0.5)
    assert M.sampled_kl(logp, logp) == 0.0
    with pytest.raises(ValueError, match="answer 0"):
        M.sampled_kl([[-1.0]], [[-1.0, -2.0]])


def test_best_of_n_kl_is_zero_for_one_sample_and_grows_like_log_n():
    assert M.best_of_n_kl(1) == 0.0
    assert M.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_lengths_eos_and_perplexity():
    assert M.mean([]) is None and M.mean([1, 2, 3]) == 2.0
    assert M.no_eos_fraction([True, False, True, True]) == 0.25
    assert M.perplexity(total_nll=2 * math.log(3), n_tokens=2) == pytest.approx(3.0)
    assert M.words("It's 3 o'clock, Bob!") == ["it's", "3", "o'clock", "bob"]


def test_win_rate_over_several_answers_per_prompt_resamples_prompts():
    # Two answers per prompt: prompt 0 wins both, prompt 1 splits, prompt 2 loses both.
    r = M.win_rate([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], n_boot=300, per_prompt=2)
    assert (r["wins"], r["losses"], r["n"], r["n_prompts"]) == (3, 3, 6, 3)
    assert r["win_rate"] == pytest.approx(0.5)
    # The interval is the one over the three per-prompt shares (1, ½, 0), not over six independent answers.
    assert r["ci"] == list(M.bootstrap_ci([1.0, 0.5, 0.0], n_boot=300))
    # Ten prompts whose two answers always agree: as wide as ten answers, wider than twenty independent ones.
    a, b = [1, 1] * 5 + [0, 0] * 5, [0, 0] * 5 + [1, 1] * 5
    grouped, ten = M.win_rate(a, b, n_boot=500, per_prompt=2), M.win_rate(a[::2], b[::2], n_boot=500)
    assert grouped["ci"] == ten["ci"]
    assert ten["ci"][1] - ten["ci"][0] > M.win_rate(a, b, n_boot=500)["ci"][1] - M.win_rate(a, b, n_boot=500)["ci"][0]
    with pytest.raises(ValueError, match="groups of 4"):
        M.win_rate([1, 0, 1], [0, 1, 0], per_prompt=4)


VERDICTS = ("correct", "partly", "incorrect")


def test_grading_accuracy_counts_an_answer_without_a_verdict_as_wrong():
    gold = ["correct", "correct", "incorrect", "partly"]
    r = M.grading_accuracy(["correct", None, "incorrect", "correct"], gold, VERDICTS, n_boot=200)
    assert r["accuracy"] == pytest.approx(2 / 4)
    assert (r["n"], r["n_prompts"], r["no_label"]) == (4, 4, 1)
    lo, hi = r["ci"]
    assert lo <= r["accuracy"] <= hi


def test_macro_f1_averages_the_per_verdict_f1_so_always_saying_correct_scores_low():
    gold = ["correct"] * 6 + ["incorrect"] * 3 + ["partly"]
    always_correct = ["correct"] * 10
    # correct: TP 6, FP 4 → F1 12/16; incorrect and partly: no true positives → F1 0. Accuracy is 0.6 all the same.
    assert M.macro_f1(always_correct, gold, VERDICTS) == pytest.approx((12 / 16) / 3)
    assert M.grading_accuracy(always_correct, gold, VERDICTS, n_boot=50)["accuracy"] == pytest.approx(0.6)
    assert M.macro_f1(gold, gold, VERDICTS) == 1.0
    # a verdict neither side uses is left out of the mean
    assert M.macro_f1(["correct", "incorrect"], ["correct", "incorrect"], VERDICTS) == 1.0


def test_grading_accuracy_resamples_prompts_when_each_has_several_answers():
    r = M.grading_accuracy(["correct", "partly", "incorrect", "incorrect"], ["correct"] * 2 + ["incorrect"] * 2,
                           VERDICTS, n_boot=100, per_prompt=2)
    assert (r["accuracy"], r["n_prompts"]) == (0.75, 2)
    with pytest.raises(ValueError, match="groups of 3"):
        M.grading_accuracy(["correct"] * 4, ["correct"] * 4, VERDICTS, per_prompt=3)
