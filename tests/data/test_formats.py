import pytest

from rlhfkit.data.formats import RecordError, feedback_to_pairs, ranking_to_pairs, ratings_to_pairs, read_records, validate
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


# --- what every line must be, whatever its kind: UTF-8, one JSON object, valid Unicode, finite numbers ---


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def read_error(path, kind="auto") -> str:
    with pytest.raises(RecordError) as err:
        read_records(path, kind)
    return str(err.value)


def test_invalid_utf8_is_reported_with_its_line_and_byte(tmp_path):
    path = write_bytes(tmp_path / "p.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    assert read_error(path, "prompt") == f"{path}:2: invalid UTF-8 at byte 16"


def test_a_byte_order_mark_is_refused_with_what_to_do(tmp_path):
    path = write_bytes(tmp_path / "p.jsonl", b'\xef\xbb\xbf{"prompt": "a"}\n')
    assert read_error(path, "prompt") == f"{path}:1: starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without one"


def test_crlf_line_ends_are_fine(tmp_path):
    path = write_bytes(tmp_path / "p.jsonl", b'{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n')
    assert [r["prompt"] for r in read_records(path, "prompt")] == ["a", "b"]


@pytest.mark.parametrize("line, field", [
    (r'{"prompt": "a\udc80"}', "prompt"),
    (r'{"messages": [{"role": "user", "content": "\udc80"}]}', "messages[0].content"),
    (r'{"prompt": "a", "topic": ["ok", "\ud800"]}', "topic[1]"),
])
def test_a_lone_surrogate_is_refused_wherever_it_is(tmp_path, line, field):
    path = write_jsonl(tmp_path / "p.jsonl", [line])
    assert read_error(path, "prompt") == f"{path}:1: {field}: text is not valid Unicode (lone surrogate)"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("line, field", [('{"prompt": "p", "response": "r", "score": %s}', "score"),
                                         ('{"prompt": "p", "response": "r", "score": 1, "meta": {"w": [0, %s]}}', "meta.w[1]")])
def test_a_non_finite_number_is_refused_wherever_it_is(tmp_path, literal, line, field):
    path = write_jsonl(tmp_path / "r.jsonl", ['{"prompt": "p", "response": "ok", "score": 1}', line % literal])
    assert read_error(path) == f"{path}:2: {field}: expected a finite number, got {literal}"


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_a_file_without_records_is_an_error(tmp_path, content):
    path = write_bytes(tmp_path / "p.jsonl", content)
    assert read_error(path, "prompt") == f"{path}: no records"


def test_a_folder_or_a_missing_path_is_named(tmp_path):
    assert read_error(tmp_path) == (f"{tmp_path}: is a folder but not a saved dataset (save_to_disk); give a JSONL, "
                                    "parquet, CSV or JSON file, or the dataset's folder")
    assert read_error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ('{"prompt": "a", "x": ' + "7" * 5000 + "}", "invalid JSON: a number with too many digits"),
    ('{"prompt": "a"} extra', "invalid JSON: Extra data at column 17"),
    ('["prompt", "a"]', "expected a JSON object, got list"),
])
def test_lines_that_are_not_one_json_object_are_named(tmp_path, line, problem):
    path = write_jsonl(tmp_path / "p.jsonl", [line])
    assert read_error(path, "prompt") == f"{path}:1: (line): {problem}"


# --- each kind's fields: texts present and different, numbers in range, rankings that are rankings ---

RANK = {"prompt": "p", "responses": ["a", "b", "c"]}


@pytest.mark.parametrize("kind, rec, field, problem", [
    ("prompt", {"prompt": ""}, "prompt", "expected text, got an empty string"),
    ("prompt", {"prompt": 3}, "prompt", "expected a string, got int"),
    ("sft", {"prompt": "p", "completion": " \n"}, "completion", "expected text, got only whitespace"),
    ("auto", {"messages": [1, 2]}, "messages[0]", "expected an object with role and content, got int"),
    ("prompt", {"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
    ("prompt", {"messages": [{"content": "hi"}]}, "messages[0].role", "missing"),
    ("prompt", {"messages": [{"role": "user", "content": ""}]}, "messages[0].content", "expected text, got an empty string"),
    ("prompt", {"messages": [{"role": "system", "content": "Be brief."}]}, "messages", "a prompt needs at least one user message"),
    ("sft", {"messages": [{"role": "assistant", "content": "Hi."}]}, "messages",
     "the prompt before the answer needs at least one user message"),
    ("preference", {"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "expected text, got an empty string"),
    ("preference", {"prompt": "p", "chosen": "a", "rejected": " a "}, "rejected",
     "the same text as chosen; a preference needs two different responses"),
    ("preference", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1}, "margin", "expected a number from 0 to 1e+06, got -1"),
    ("preference", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "1"}, "margin", "expected a number, got str"),
    ("rating", {"prompt": "p", "response": "r", "score": 1e308}, "score", "expected a number from -1e+06 to 1e+06, got 1e+308"),
    ("rating", {"prompt": "p", "response": "r", "score": True}, "score", "expected a number, got bool"),
    ("rating", {"prompt": "p", "response": "r"}, "score", "missing"),
    ("rating", {"prompt": "p", "response": "", "score": 1}, "response", "expected text, got an empty string"),
    ("ranking", {**RANK, "ranking": [[], []]}, "ranking[0]", "an empty tie group; a place needs at least one index"),
    ("ranking", {**RANK, "ranking": [[0, 1, 2]]}, "ranking", "expected a list of at least 2 places (response indices, best first)"),
    ("ranking", {**RANK, "ranking": [0, [1, 0]]}, "ranking[1]", "index 0 appears twice"),
    ("ranking", {**RANK, "ranking": [0, 1.0]}, "ranking[1]", "expected an index in 0..2, got 1.0"),
    ("ranking", {"prompt": "p", "responses": ["", ""], "ranking": [0, 1]}, "responses[0]", "expected text, got an empty string"),
    ("ranking", {"prompt": "p", "responses": ["a", "a "], "ranking": [0, 1]}, "responses[1]",
     "the same text as responses[0]; each response must differ"),
    ("ranking", {"prompt": "p", "responses": "ab", "ranking": [0, 1]}, "responses", "expected a list of at least 2 strings, got str"),
    ("edit", {"prompt": "p", "response": "r", "edited": ""}, "edited", "expected text, got an empty string"),
    ("candidates", {"prompt": "p", "responses": ["a"]}, "responses", "expected a list of at least 2 strings, got a list of 1"),
    ("prompt", {"prompt": "p", "reference": 3}, "reference", "expected a string, got int"),
    ("prompt", {"prompt": "p", "keywords": "sun"}, "keywords", "expected a list of strings, got str"),
    ("prompt", {"prompt": "p", "keywords": ["sun", ""]}, "keywords[1]", "expected text, got an empty string"),
    ("prompt", {"prompt": "p", "draft": 1}, "draft", "expected a string, got int"),
])
def test_each_bad_field_is_named_with_its_problem(kind, rec, field, problem):
    with pytest.raises(RecordError) as err:
        validate(rec, kind, "f:1")
    assert str(err.value) == f"f:1: {field}: {problem}"


def test_optional_fields_may_be_null_and_unchanged_edits_are_valid():
    validate({"prompt": "p", "reference": None, "keywords": None}, "prompt", "f:1")
    validate({"prompt": "p", "chosen": "a", "rejected": "b", "margin": None}, "preference", "f:1")
    validate({"prompt": "p", "response": "same", "edited": "same"}, "edit", "f:1")  # "the response is fine"
