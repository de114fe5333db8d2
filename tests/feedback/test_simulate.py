import math

import pytest

from rlhfkit.config import SimulateConfig
from rlhfkit.data.formats import RecordError, ranking_to_pairs, read_records
from rlhfkit.feedback.simulate import simulate_feedback
from rlhfkit.judges import get_judge
from tests.conftest import write_jsonl
from tests.stages.test_reward_model import cli


def candidates_file(tmp_path, n_prompts=60, lengths=(1, 2, 3, 4)):
    """Candidates whose gold `length` score is the number of words (shuffled per prompt)."""
    recs = []
    for i in range(n_prompts):
        order = [lengths[(i + j) % len(lengths)] for j in range(len(lengths))]
        recs.append({"prompt": f"prompt {i}", "responses": [" ".join(["w"] * n) + f" {i}" for n in order], "topic": "t"})
    return write_jsonl(tmp_path / "cand.jsonl", recs)


def run(tmp_path, kind, **kw):
    cfg = SimulateConfig(judge="length", candidates=str(tmp_path / "cand.jsonl"), output=str(tmp_path / f"{kind}.jsonl"), kind=kind, **kw)
    return simulate_feedback(cfg)


def words(text: str) -> int:
    return len(text.split())


def pair_agreement(records) -> float:
    """Share of preference pairs (from any kind) that agree with the gold order (more words wins)."""
    pairs = [(r["chosen"], r["rejected"]) for r in records if "chosen" in r]
    for r in records:
        if "ranking" in r:
            pairs += [(p.chosen, p.rejected) for p in ranking_to_pairs(r)]
    return sum(words(c) > words(rj) for c, rj in pairs) / len(pairs)


def test_zero_noise_rankings_reproduce_the_gold_order_exactly(tmp_path):
    candidates_file(tmp_path)
    recs = run(tmp_path, "rank")
    assert len(recs) == 60
    for r in recs:
        gold = [words(x) for x in r["responses"]]
        assert r["ranking"] == sorted(range(4), key=lambda i: -gold[i])
    # The records are valid DESIGN §3 rankings and expand to K·(K−1)/2 pairs, all agreeing with gold.
    assert len(read_records(tmp_path / "rank.jsonl", "ranking")) == 60
    assert pair_agreement(recs) == 1.0 and sum(len(ranking_to_pairs(r)) for r in recs) == 60 * 6


def test_zero_noise_compare_rate_and_edit_agree_with_gold(tmp_path):
    candidates_file(tmp_path)
    compares = run(tmp_path, "compare", compare_pairs=6)
    assert len(compares) == 60 * 6 and pair_agreement(compares) == 1.0
    assert all(r["margin"] >= 0 for r in compares)
    rates = run(tmp_path, "rate")
    # Gold 2..5 words over the file maps linearly onto the 1–7 scale.
    assert {words(r["response"]): r["score"] for r in rates[:4]} == {2: 1, 3: 3, 4: 5, 5: 7}
    edits = run(tmp_path, "edit")
    for r in edits:
        assert words(r["edited"]) == 5 or (words(r["response"]) == 5 and r["edited"] == r["response"])
    read_records(tmp_path / "edit.jsonl", "edit")
    read_records(tmp_path / "rate.jsonl", "rating")


def test_equal_gold_scores_are_tied_in_rankings_and_skipped_in_comparisons(tmp_path):
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": "p", "responses": ["a b", "c d", "e", "f g h"]}])
    (rank,) = run(tmp_path, "rank")
    assert rank["ranking"] == [3, [0, 1], 2]
    assert len(ranking_to_pairs(rank)) == 5  # the tied pair gives no preference
    compares = run(tmp_path, "compare", compare_pairs=6)
    assert len(compares) == 5 and all(words(r["chosen"]) > words(r["rejected"]) for r in compares)


def test_agreement_with_gold_falls_as_the_temperature_rises(tmp_path):
    candidates_file(tmp_path, n_prompts=300)
    agreement = [pair_agreement(run(tmp_path, "rank", temperature=t, seed=1)) for t in (0.0, 0.5, 2.0, 8.0)]
    assert agreement[0] == 1.0
    assert all(a > b for a, b in zip(agreement, agreement[1:])), agreement
    assert agreement[-1] > 0.5  # still better than chance


def test_a_pairwise_choice_follows_bradley_terry(tmp_path):
    # Gold scores 1 and 2 (one and two words): P(longer wins) = σ(1/T).
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": f"p{i}", "responses": ["a", "b c"]} for i in range(2000)])
    for t in (0.5, 1.0):
        got = pair_agreement(run(tmp_path, "compare", temperature=t, seed=2))
        assert got == pytest.approx(1 / (1 + math.exp(-1 / t)), abs=0.03)


def test_the_flip_rate_reverses_that_share_of_choices(tmp_path):
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": f"p{i}", "responses": ["a", "b c"]} for i in range(2000)])
    agreement = [pair_agreement(run(tmp_path, "compare", flip_rate=f, seed=3)) for f in (0.0, 0.1, 0.3)]
    assert agreement[0] == 1.0
    assert agreement[1] == pytest.approx(0.9, abs=0.03) and agreement[2] == pytest.approx(0.7, abs=0.03)


def test_annotators_have_their_own_rating_bias_and_names(tmp_path):
    candidates_file(tmp_path, n_prompts=40)
    rates = run(tmp_path, "rate", annotators=4, per_prompt=4, bias_std=1.5, seed=0)
    assert len(rates) == 40 * 4 * 4
    by_annotator: dict[str, list[int]] = {}
    for r in rates:
        by_annotator.setdefault(r["annotator"], []).append(r["score"])
    assert set(by_annotator) == {"sim-0", "sim-1", "sim-2", "sim-3"}
    means = sorted(sum(v) / len(v) for v in by_annotator.values())
    assert means[-1] - means[0] > 0.5  # a lenient and a harsh rater on the same responses


def test_simulation_is_reproducible_for_a_seed(tmp_path):
    candidates_file(tmp_path)
    assert run(tmp_path, "rank", temperature=1.0, seed=5) == run(tmp_path, "rank", temperature=1.0, seed=5)
    assert run(tmp_path, "rank", temperature=1.0, seed=5) != run(tmp_path, "rank", temperature=1.0, seed=6)


def test_malformed_candidates_are_reported_with_file_line_and_field(tmp_path):
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": ["a", 3]}])
    with pytest.raises(RecordError, match=r"cand.jsonl:2: responses\[1\]: expected a string"):
        run(tmp_path, "rank")


def test_tutor_judge_prefers_a_simple_explanation_that_covers_the_keywords():
    tutor = get_judge("tutor")
    prompt = {"prompt": "Why do stars twinkle?", "keywords": ["atmosphere", "air", "light", "moving"]}
    simple = ("Stars twinkle because their light passes through the air around Earth. The air is always moving, "
              "so the light bends a little this way and that. That makes a star look like it blinks. "
              "We call this blanket of air the atmosphere.")
    jargon = "Stellar scintillation results from atmospheric turbulence refracting incident electromagnetic radiation inhomogeneously."
    rambling = " ".join([simple] * 6)
    off_topic = "Dogs like to run and play in the park. They wag their tails when they are happy. It is fun to watch them."
    s = dict(zip(["simple", "jargon", "rambling", "off_topic"], tutor([prompt] * 4, [simple, jargon, rambling, off_topic])))
    assert s["simple"] > max(s["jargon"], s["rambling"], s["off_topic"])


def test_cli_writes_feedback_records_of_the_asked_kind(tmp_path):
    candidates_file(tmp_path, n_prompts=5)
    out = tmp_path / "fb.jsonl"
    cli("feedback", "simulate", "--judge", "length", "--candidates", str(tmp_path / "cand.jsonl"), "--kind", "compare",
         "--output", str(out), "--temperature", "0.5", "--set", "compare_pairs=2", "--annotators", "2")
    recs = read_records(out, "preference")
    assert len(recs) == 10 and {r["annotator"] for r in recs} == {"sim-0", "sim-1"}


def test_an_edit_to_the_reference_types_what_was_said_with_the_stated_share_of_slips(tmp_path):
    """The asr recipe's transcriber: the shown transcript is edited into the record's reference, each word
    wrong with probability edit_error_rate (the shown word in its place, or left out past its end)."""
    reference = "hello i am calling about my order number four five two which arrived damaged on tuesday"
    shown = "the goal i am talking about my dog"
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": f"p{i}", "responses": [shown, "other"], "reference": reference}
                                          for i in range(200)])
    cfg = dict(judge="asr", candidates=str(tmp_path / "cand.jsonl"), kind="edit", edit_to="reference")
    exact = simulate_feedback(SimulateConfig(output=str(tmp_path / "exact.jsonl"), **cfg))
    assert all(r["edited"] == reference and r["response"] == shown for r in exact)
    sloppy = simulate_feedback(SimulateConfig(output=str(tmp_path / "sloppy.jsonl"), edit_error_rate=0.1, seed=3, **cfg))
    judge = get_judge("asr")
    wer = [1 - s for s in judge([{"reference": reference}] * len(sloppy), [r["edited"] for r in sloppy])]
    assert 0.07 < sum(wer) / len(wer) < 0.13  # 16 words × 200 edits at 10 %
    assert all(set(r["edited"].split()) <= set(reference.split()) | set(shown.split()) for r in sloppy)
    read_records(tmp_path / "sloppy.jsonl", "edit")
    write_jsonl(tmp_path / "cand.jsonl", [{"prompt": "p", "responses": [shown, "other"]}])
    with pytest.raises(ValueError, match="has no \"reference\" to edit towards"):
        simulate_feedback(SimulateConfig(output=str(tmp_path / "none.jsonl"), **{**cfg, "judge": "length"}))
