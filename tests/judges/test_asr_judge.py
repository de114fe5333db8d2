"""The asr judge and the transcription metrics against jiwer on hand-made cases."""

import jiwer
import pytest

from rlhfkit.eval import metrics as M
from rlhfkit.judges import get_judge

REF = "my phone number is four five two"


@pytest.mark.parametrize("hypothesis, edits", [
    ("my phone number is four five two", 0),
    ("my phone number is for five to", 2),  # two substitutions
    ("phone number is four five two", 1),  # a deletion
    ("my new phone number is four five two two", 2),  # two insertions
    ("the phone", 6),  # one substitution, five deletions
])
def test_the_judge_is_one_minus_the_word_error_rate_jiwer_computes(hypothesis, edits):
    score = get_judge("asr")([{"reference": REF}], [hypothesis])[0]
    assert jiwer.wer(REF, hypothesis) == pytest.approx(edits / 7)
    assert score == pytest.approx(max(0.0, 1 - jiwer.wer(REF, hypothesis)))


def test_case_and_punctuation_are_not_errors_and_an_empty_answer_scores_zero():
    judge = get_judge("asr")
    assert judge([{"reference": REF}] * 2, ["My phone number is four, five, two.", ""]) == [1.0, 0.0]


def test_an_answer_with_chatter_scores_below_the_bare_transcript_even_when_every_word_is_there():
    judge = get_judge("asr")
    bare = "hello i'm calling about my order number four five two which arrived damaged"
    answers = [bare,
               f"The corrected transcript is: {bare}",
               f"{bare} (I think the caller probably said this)",
               f"Here's what was said: {bare}"]
    scores = judge([{"reference": bare}] * len(answers), answers)
    assert scores[0] == 1.0 and all(s < scores[0] - 0.2 for s in scores[1:])
    # words the speaker really said are not commentary
    said = "i think my order should be here by friday"
    assert judge([{"reference": said}], [said]) == [1.0]


def test_corpus_error_rates_match_jiwer_and_the_interval_holds_the_estimate():
    refs = ["the cat sat on the mat", "call me at nine", "she sells sea shells", "pay the bill today"]
    hyps = ["the cat sat on a mat", "call me at night", "she sells shells", "pay the bill today please"]
    counts = [M.word_errors(r, h) for r, h in zip(refs, hyps)]
    rates = M.error_rate(counts, n_boot=500)
    assert rates["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert rates["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert rates["wer_ci"][0] <= rates["wer"] <= rates["wer_ci"][1] and rates["n_prompts"] == 4
    # two answers a prompt: the interval resamples the 2 prompts, the rate counts all 4 answers
    paired = M.error_rate(counts, per_prompt=2, n_boot=200)
    assert paired["wer"] == pytest.approx(rates["wer"]) and paired["n_prompts"] == 2 and paired["n"] == 4


def test_the_oracle_picks_the_hypothesis_nearest_the_reference_and_transcription_needs_every_record():
    record = {"reference": REF, "nbest": [{"text": "my phone number is for five to"},
                                          {"text": "my phone number is four five to"},
                                          {"text": "hi phone"}]}
    assert M.oracle_hypothesis(record) == "my phone number is four five to"
    assert M.transcription(["x"], [{"prompt": "no speech here"}]) is None
    with pytest.raises(ValueError, match="1 of 2 prompt records have no recogniser"):
        M.transcription(["a", "b"], [record, {"prompt": "p", "reference": REF}])
    row = M.transcription([REF, "my phone"], [record, record], n_boot=100)
    assert row["wer"] == pytest.approx(5 / 14)


def test_the_judge_names_a_record_without_its_reference():
    with pytest.raises(ValueError, match="prompt record 1: reference"):
        get_judge("asr")([{"reference": REF}, {"prompt": "p"}], ["a", "b"])
