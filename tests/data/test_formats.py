import pytest

from rlhfkit.data.formats import (RecordError, feedback_to_pairs, ranking_to_pairs, ratings_to_pairs, read_records,
                                  validate)
from tests.conftest import write_jsonl


def test_malformed_line_is_reported_with_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": None, "rejected": "b"},
    ])
    with pytest.raises(RecordError) as err:
        read_records(path, "preference")
    assert str(err.value) == f"{path}:2: chosen: expected a string, got null"


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, "{not json"])
    with pytest.raises(RecordError, match=r"sft.jsonl:2: \(line\): invalid JSON"):
        read_records(path, "sft")


def test_missing_field_and_bad_ranking_index_are_named(tmp_path):
    with pytest.raises(RecordError, match="f:3: completion: missing"):
        validate({"prompt": "p"}, "sft", "f:3")
    with pytest.raises(RecordError, match=r"f:1: ranking\[1\]: expected an index in 0..1, got 5"):
        validate({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 5]}, "ranking", "f:1")
    with pytest.raises(RecordError, match=r"f:1: messages\[0\].role"):
        validate({"messages": [{"role": "bot", "content": "x"}]}, "prompt", "f:1")


def test_blank_lines_are_skipped_and_everything_else_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert [r["prompt"] for r in read_records(path, "prompt")] == ["a", "b"]


def test_ranking_of_k_expands_to_k_choose_2_ordered_pairs():
    pairs = ranking_to_pairs({"prompt": "p", "responses": ["r0", "r1", "r2", "r3"], "ranking": [2, 0, 3, 1]})
    assert len(pairs) == 6
    assert ("r2", "r0") in {(p.chosen, p.rejected) for p in pairs}
    assert ("r3", "r1") in {(p.chosen, p.rejected) for p in pairs}
    assert all(p.group == "p" for p in pairs)


def test_ranking_ties_give_no_pair_between_tied_responses():
    pairs = ranking_to_pairs({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [[0, 1], 2]})
    assert {(p.chosen, p.rejected) for p in pairs} == {("a", "c"), ("b", "c")}


def test_ratings_become_pairs_within_a_prompt_and_ties_are_dropped():
    recs = [{"prompt": "p", "response": "a", "score": 5}, {"prompt": "p", "response": "b", "score": 2},
            {"prompt": "p", "response": "c", "score": 5}, {"prompt": "q", "response": "d", "score": 1}]
    pairs = ratings_to_pairs(recs)
    assert {(p.chosen, p.rejected, p.margin) for p in pairs} == {("a", "b", 3.0), ("c", "b", 3.0)}


def test_edit_becomes_edited_over_original_and_mixed_feedback_is_combined():
    recs = [{"prompt": "p", "response": "bad", "edited": "good"},
            {"prompt": "p", "chosen": "x", "rejected": "y", "margin": 1.5},
            {"prompt": "p", "response": "same", "edited": "same"}]
    pairs = feedback_to_pairs(recs)
    assert [(p.chosen, p.rejected, p.margin) for p in pairs] == [("good", "bad", 0.0), ("x", "y", 1.5)]
