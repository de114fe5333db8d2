"""Reading candidates files: both shapes, clear errors, and tasks made per kind."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from rlhfkit.data.formats import RecordError
from rlhfkit.feedback.db import Database, Response, Task
from rlhfkit.feedback.importer import import_candidates, read_candidates, read_guidelines, task_specs

from .conftest import write_jsonl


def test_one_line_per_candidate_is_grouped_on_the_prompt(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p1", "response": "a", "model": "m"},
                                              {"prompt": "p2", "response": "x"},
                                              {"prompt": "p1", "response": "b", "model": "m", "score": 0.3}])
    groups = read_candidates(path)
    assert [(g.record, g.responses) for g in groups] == [({"prompt": "p1"}, ["a", "b"]), ({"prompt": "p2"}, ["x"])]
    assert groups[0].metas[1] == {"score": 0.3}  # extra fields are kept with the response


@pytest.mark.parametrize("line, field", [
    ('{"responses": ["a"]}', "prompt"),
    ('{"prompt": "p"}', "responses"),
    ('{"prompt": "p", "responses": []}', "responses"),
    ('{"prompt": "p", "responses": ["a", 3]}', "responses[1]"),
    ('{"prompt": "p", "response": null}', "response"),
    ('{"prompt": "p", "responses": ["a"], "model": 1}', "model"),
    ('{"messages": [{"role": "robot", "content": "x"}], "responses": ["a"]}', "messages[0].role"),
    ('{"prompt": "p", "responses": ["a", "b"], "gold": {"ranking": [0, 5]}}', "gold.ranking[1]"),
    ('{"prompt": "p", "responses": ["a", "b"], "gold": {"ratings": [1]}}', "gold.ratings"),
    ('{"prompt": "p", "responses": ["a", "b"], "gold": {"ratings": [1, 9]}}', "gold.ratings[1]"),
    ('{"prompt": "p", "responses": ["a", "b"], "gold": {"best": 0}}', "gold.best"),
    ('{"prompt": "p\\u0000", "responses": ["a"]}', "prompt"),  # NUL: PostgreSQL refuses it in text
    ('[1, 2]', "(line)"),
    ('{"prompt": ', "(line)"),
    ('{"prompt": "p", "responses": ["", ""]}', "responses[0]"),
    ('{"prompt": "p", "responses": ["a", " a"]}', "responses[1]"),
    ('{"prompt": "fine", "response": "ok"}', "response"),  # a copy of line 1's response, on a line of its own
    ('{"prompt": "p", "response": "a", "score": NaN}', "score"),
    ('{"prompt": "p\\udc80", "responses": ["a"]}', "prompt"),
    ('{"prompt": "p", "responses": ["a", "b"], "gold": {"ranking": [[], []]}}', "gold.ranking[0]"),
])
def test_a_bad_line_is_reported_as_file_line_field(tmp_path, line, field):
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "fine", "responses": ["ok"]}\n' + line + "\n")
    with pytest.raises(RecordError) as e:
        read_candidates(path)
    assert str(e.value).startswith(f"{path}:2: {field}: ")


def test_an_empty_candidates_file_is_an_error_not_an_empty_project(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n")
    with pytest.raises(RecordError, match=f"^{path}: no records$"):
        read_candidates(path)


def test_guidelines_that_are_not_utf8_are_reported_with_their_line(tmp_path):
    path = tmp_path / "guide.md"
    path.write_bytes("# Guide\nSé amable.\n".encode("latin-1"))
    with pytest.raises(RecordError, match=f"^{path}:2: invalid UTF-8 at byte 2$"):
        read_guidelines(path)
    path.write_text("# Guide\nSé amable.\n", encoding="utf-8")
    assert read_guidelines(path) == "# Guide\nSé amable.\n"


def test_tasks_per_prompt_for_each_kind():
    assert task_specs(["rate", "rank", "compare", "edit"], 3) == [
        ("rate", [0]), ("rate", [1]), ("rate", [2]), ("rank", [0, 1, 2]),
        ("compare", [0, 1]), ("compare", [0, 2]), ("compare", [1, 2]), ("edit", [0])]
    assert task_specs(["rank", "compare"], 1) == []  # nothing to order with one response


def test_reimporting_skips_prompts_already_in_the_project(tmp_path, candidates):
    db = Database(str(tmp_path / "f.db"))
    first = import_candidates(db, "p", candidates, "rate,compare")
    again = import_candidates(db, "p", candidates, "rate,compare")
    assert first["tasks"] == 12 and again == {"prompts": 0, "responses": 0, "tasks": 0, "gold_tasks": 0,
                                             "skipped_prompts": 2}
    with db.tx() as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 12
        model, checkpoint, meta = s.execute(select(Response.model, Response.checkpoint, Response.meta).limit(1)).one()
    assert (model, checkpoint, meta["sampling"]) == ("tiny", "runs/t/sft", {"temperature": 0.7})
    db.dispose()


def test_unknown_kinds_and_a_gold_file_without_answers_are_refused(tmp_path, candidates):
    db = Database(str(tmp_path / "f.db"))
    with pytest.raises(ValueError, match="--kinds"):
        import_candidates(db, "p", candidates, "rate,vote")
    with pytest.raises(RecordError, match="gold: missing"):
        import_candidates(db, "p", candidates, "rate", gold=candidates)
    db.dispose()


def test_a_project_name_or_guidelines_that_cannot_be_stored_are_refused(tmp_path, candidates):
    db = Database(str(tmp_path / "f.db"))
    with pytest.raises(ValueError, match="--project: not valid Unicode: a lone surrogate U\\+DC80"):
        import_candidates(db, "demo \udc80", candidates, "rate")
    with pytest.raises(ValueError, match="--project: may not contain '/'"):
        import_candidates(db, "a/b", candidates, "rate")
    with pytest.raises(ValueError, match="--guidelines: contains a NUL character"):
        import_candidates(db, "demo", candidates, "rate", guidelines="Be kind.\x00")
    db.dispose()


@pytest.mark.parametrize("name, problem", [("../secret.wav", "no folders"), ("clips/a.wav", "no folders"),
                                           (".hidden.wav", "no folders"), ("notes.txt", ".flac, .mp3, .ogg, .wav"),
                                           (7, "no folders")])
def test_a_clip_is_a_file_name_of_a_known_audio_type_in_the_media_folder(tmp_path, name, problem):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["a", "b"]},
                                              {"prompt": "q", "responses": ["a", "b"], "audio": name}])
    with pytest.raises(RecordError, match=rf"c\.jsonl:2: audio: .*{problem}"):
        read_candidates(path)


def test_the_app_serves_a_task_s_clip_to_its_annotator_only_and_says_why_when_it_cannot(tmp_path, db_url):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.app import create_app

    from .conftest import ADMIN, auth

    media = tmp_path / "media"
    media.mkdir()
    (media / "u1.wav").write_bytes(b"RIFF....WAVEfmt ")
    db = Database(db_url)
    import_candidates(db, "asr", write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "heard: the goal", "response": "the goal", "audio": "u1.wav"},
        {"prompt": "no clip here", "response": "text"}]), "edit", annotators_per_task=3)
    db.dispose()
    for folder, status in ((media, 200), (None, 404)):
        with TestClient(create_app(db_url, ADMIN, media=folder)) as client:
            tokens = [client.post("/api/admin/annotators", json={"name": f"{n}{status}"}, headers=auth(ADMIN)).json()["token"]
                      for n in ("ann", "other")]  # the second app, on the same database, gets annotators of its own
            tasks = client.post("/api/projects/asr/claim", json={"n": 2}, headers=auth(tokens[0])).json()["tasks"]
            by_clip = {t.get("audio", False): t["assignment_id"] for t in tasks}
            r = client.get(f"/api/assignments/{by_clip[True]}/audio", headers=auth(tokens[0]))
            assert r.status_code == status
            if status == 200:
                assert r.content == b"RIFF....WAVEfmt " and r.headers["content-type"] == "audio/wav"
                assert client.get(f"/api/assignments/{by_clip[True]}/audio", headers=auth(tokens[1])).status_code in (403, 404)
                r = client.get(f"/api/assignments/{by_clip[False]}/audio", headers=auth(tokens[0]))
                assert r.status_code == 404 and "has no clip" in r.text
            else:
                assert "without a media folder" in r.text
