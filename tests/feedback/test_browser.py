"""The page in Debian's chromium (headless, through Playwright; no browser download): one task of each kind,
answered with the keyboard under the app's Content-Security-Policy, then checked in the database. With RLHFKIT_SCREENSHOTS=DIR it also saves a
screenshot of each kind (docs/screenshots/ is made this way)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from rlhfkit.feedback.db import Answer, Assignment, Database, Task
from rlhfkit.feedback.importer import import_candidates

from .conftest import ADMIN, auth, write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                 "(apt-get install chromium; .ci/run installs it)")]

PAIR = {"prompt": "Explain to a 10-year-old why the sky is blue.",
        "responses": ["Sunlight is made of all colours. Air scatters blue light much more than red light, so blue "
                      "light comes at your eyes from every part of the sky.",
                      "Because the sky reflects the ocean, which is blue."],
        "model": "tiny", "checkpoint": "runs/demo/sft"}
SINGLE = {"prompt": "What is 3/4 + 1/8? Show your steps.",
          "response": "First write 3/4 as 6/8. Then 6/8 + 1/8 = 7/8. So the answer is 7/8.", "model": "tiny"}
GUIDELINES = ("Judge the answer a patient tutor would give: correct first, then clear, then kind.\n"
              "Wrong facts make an answer poor however well it reads.")


def open_page(p, width: int = 1280, height: int = 800):
    """(browser, page, refused): Debian's chromium with one page, and the messages it logs for whatever the
    Content-Security-Policy blocks (a list that stays empty when the page keeps to its policy)."""
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return browser, page, refused


def test_one_task_of_each_kind_through_the_page(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    import_candidates(db, "tutor", write_jsonl(tmp_path / "pair.jsonl", [PAIR]), "rank,compare,edit",
                      guidelines=GUIDELINES)
    import_candidates(db, "tutor", write_jsonl(tmp_path / "single.jsonl", [SINGLE]), "rate")
    server = server_factory(db_url)
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    shots = Path(os.environ["RLHFKIT_SCREENSHOTS"]) if os.environ.get("RLHFKIT_SCREENSHOTS") else None

    with playwright.sync_playwright() as p:
        browser, page, refused = open_page(p, 1100, 760)
        page.goto(server.url + "/")
        page.fill("#token", token)
        page.press("#token", "Enter")
        seen = []
        for _ in range(4):
            page.wait_for_selector("#view-task:not([hidden])")
            kind = page.get_attribute("#view-task", "data-kind")
            assignment = page.get_attribute("#view-task", "data-assignment")
            seen.append(kind)
            if kind == "rate":
                page.keyboard.press("6")
            elif kind == "compare":
                page.keyboard.press("b")
                page.keyboard.press("3")
            elif kind == "rank":
                page.keyboard.press("2")  # response 2 (as shown) first, then response 1
                page.keyboard.press("1")
            elif kind == "edit":
                page.fill("#edit-text", "Air scatters blue light more than red light, so the sky looks blue.")
                page.keyboard.press("Escape")
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"feedback-{kind}.png"), full_page=True)
            page.keyboard.press("Enter")
            next_shown(page, assignment)
        page.wait_for_selector("#view-done:not([hidden])")
        # Go back and change the last answer: it becomes revision 2.
        page.keyboard.press("u")
        page.wait_for_selector("#banner:not([hidden])")
        last_kind = page.get_attribute("#view-task", "data-kind")
        if last_kind == "edit":
            page.fill("#edit-text", "Changed my mind: blue light scatters most.")
            page.keyboard.press("Control+Enter")
        else:
            page.keyboard.press({"rate": "2", "compare": "a", "rank": "0"}[last_kind])
            if last_kind == "rank":
                page.keyboard.press("1")
                page.keyboard.press("2")
            page.keyboard.press("Enter")
        page.wait_for_selector("#view-done:not([hidden])")
        assert "4 done" in page.inner_text("#progress")
        browser.close()
    assert refused == []

    assert sorted(seen) == ["compare", "edit", "rank", "rate"]
    with db.tx() as s:
        rows = s.execute(select(Task.kind, Assignment.display_order, Assignment.status, Answer.payload, Answer.revision)
                         .join(Assignment, Assignment.task_id == Task.id)
                         .join(Answer, Answer.assignment_id == Assignment.id).order_by(Answer.id)).all()
    db.dispose()
    first = {kind: (order, status, payload) for kind, order, status, payload, rev in rows if rev == 1}
    assert all(status == "done" for _, status, _ in first.values())
    assert first["rate"][2]["score"] == 6
    order, _, compare = first["compare"]
    assert compare["choice"] == "b" and compare["strength"] == "much" and compare["better"] == order[1]
    order, _, rank = first["rank"]
    assert rank["ranking"] == [[order[1]], [order[0]]]
    assert first["edit"][2]["edited"].startswith("Air scatters blue light")
    revised = [(kind, payload) for kind, _, _, payload, rev in rows if rev == 2]
    assert [k for k, _ in revised] == [last_kind]


def test_a_reviewer_resolves_a_disagreement_in_the_page_and_it_is_stored_beside_the_answers(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    from rlhfkit.feedback.db import Resolution

    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    import_candidates(db, "tutor", write_jsonl(tmp_path / "pair.jsonl", [PAIR]), "compare", annotators_per_task=2)
    server = server_factory(db_url)

    def person(name: str) -> str:
        return httpx.post(server.url + "/api/admin/annotators", json={"name": name}, headers=auth(ADMIN)).json()["token"]

    for name, position in (("ann", 0), ("bob", 1)):  # the two annotators disagree: ann prefers the first response
        token = person(name)
        task = httpx.get(server.url + "/api/projects/tutor/next", headers=auth(token)).json()["task"]
        choice = "a" if task["responses"][0]["id"] == position else "b"  # as shown to them (a random order)
        r = httpx.post(f"{server.url}/api/assignments/{task['assignment_id']}/answer", headers=auth(token),
                       json={"choice": choice, "strength": "clearly", "submission_id": f"{name}-answer-1", "comment": f"{name} thinks so"})
        assert r.status_code == 201, r.text
    reviewer = person("rev")
    r = httpx.patch(server.url + "/api/admin/annotators/rev", json={"reviewer": True}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    with db.tx() as s:
        answers_before = sorted((a.id, a.payload["better"]) for a in s.scalars(select(Answer)))

    with playwright.sync_playwright() as p:
        browser, page, refused = open_page(p, 1280, 800)
        page.goto(f"{server.url}/#token={reviewer}")
        page.wait_for_selector("#view-projects:not([hidden])")
        assert "(reviewer)" in page.inner_text("#who")
        page.click("button.review")
        page.wait_for_selector("#review-panel:not([hidden])")
        said = page.inner_text("#review-answers")
        assert "ann: A clearly better" in said and "bob: B clearly better" in said and "bob thinks so" in said
        assert "agreement 0.00" in page.inner_text("#banner")
        screenshot(page, "review")
        page.keyboard.press("b")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-done:not([hidden])")
        assert "No disagreement left to review" in page.inner_text("#done-text")
        browser.close()
    assert refused == []
    with db.tx() as s:
        (res,) = s.scalars(select(Resolution))
        assert res.payload["choice"] == "b" and res.payload["better"] == 1 and res.payload["strength"] == "much"
        assert sorted((a.id, a.payload["better"]) for a in s.scalars(select(Answer))) == answers_before
    db.dispose()


def test_markdown_guidelines_without_raw_html_long_words_the_rank_legend_at_1280x800_and_a_token_link_switching(
        tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    long_word = "x" * 400  # one word wider than any screen
    many = {"prompt": "Which explanation is best? " + long_word,
            "responses": [f"Answer {i}: " + "a long explanation that goes on. " * 40 for i in range(4)], "model": "tiny"}
    guidelines = ("# Rules\n\n- Be **correct** first.\n- Then `kind`.\n\n"
                  "<img src=x onerror=\"document.title='pwned'\"> [click](javascript:alert(1))")
    # two annotators a task: the one task held by ann is still open to bob
    import_candidates(db, "tutor", write_jsonl(tmp_path / "many.jsonl", [many]), "rank", guidelines=guidelines,
                      annotators_per_task=2)
    db.dispose()
    server = server_factory(db_url)
    tokens = {name: httpx.post(server.url + "/api/admin/annotators", json={"name": name}, headers=auth(ADMIN)).json()["token"]
              for name in ("ann", "bob")}
    with playwright.sync_playwright() as p:
        browser, page, _ = open_page(p)
        page.goto(f"{server.url}/#token={tokens['ann']}")
        page.wait_for_selector("#view-task:not([hidden])")
        # Markdown, rendered; the raw HTML in it shown as text, never run; no javascript: link made
        assert page.inner_text("#guidelines-text h1") == "Rules"
        assert page.inner_text("#guidelines-text strong") == "correct"
        assert "<img src=x" in page.inner_text("#guidelines-text") and page.query_selector("#guidelines-text img") is None
        assert page.query_selector("#guidelines-text a") is None and page.title() != "pwned"
        page.keyboard.press("g")  # collapses them
        assert page.evaluate("() => document.querySelector('#guidelines').open") is False
        # a 400-character word wraps: the page is no wider than the window
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
        # the rank legend is on screen with four long responses
        box = page.query_selector("#keys").bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800
        assert "tie it with the last place" in page.inner_text("#keys")
        # a link with another annotator's token, opened in this tab, switches to them: bob's name, and bob's own
        # assignment of the task (ann's view stays on screen until his arrives, so it is told apart by its id)
        ann_assignment = page.get_attribute("#view-task", "data-assignment")
        page.evaluate("(t) => { location.hash = 'token=' + t; }", tokens["bob"])
        page.wait_for_function("() => document.querySelector('#who').textContent === 'bob'")
        page.wait_for_function("(a) => { const v = document.querySelector('#view-task'); "
                               "return !v.hidden && v.dataset.assignment !== a; }", arg=ann_assignment)
        browser.close()


def test_a_thumbs_task_is_answered_with_one_key(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    two = [SINGLE, {**SINGLE, "response": "It is 4/12.", "prompt": "What is 3/4 + 1/8?"}]
    import_candidates(db, "tutor", write_jsonl(tmp_path / "single.jsonl", two), "thumbs")
    server = server_factory(db_url)
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    with playwright.sync_playwright() as p:
        browser, page, _ = open_page(p)
        page.goto(f"{server.url}/#token={token}")
        answers = {}
        for _ in range(2):
            page.wait_for_selector("#view-task:not([hidden])")
            assert page.get_attribute("#view-task", "data-kind") == "thumbs"
            shown = page.get_attribute("#view-task", "data-assignment")
            key = "n" if "4/12" in page.inner_text("#task-body") else "ArrowUp"
            if not answers:
                screenshot(page, "thumbs")
            answers[int(shown)] = "down" if key == "n" else "up"
            page.keyboard.press(key)  # one key: no Enter
            next_shown(page, shown)
        page.wait_for_selector("#view-done:not([hidden])")
        browser.close()
    with db.tx() as s:
        stored = dict(s.execute(select(Answer.assignment_id, Answer.payload)).all())
    db.dispose()
    assert {a: p["thumb"] for a, p in stored.items()} == answers and sorted(answers.values()) == ["down", "up"]


def test_the_admin_page_creates_a_project_from_a_file_adds_an_annotator_whose_link_works_and_exports(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    from rlhfkit.feedback.db import Annotator, Project

    db_url = str(tmp_path / "feedback.db")
    Database(db_url).dispose()
    server = server_factory(db_url)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "q", "responses": ["same", "same"]}\n')
    good = write_jsonl(tmp_path / "cands.jsonl", [PAIR])
    with playwright.sync_playwright() as p:
        browser, page, refused = open_page(p, 1280, 800)
        page.goto(server.url + "/admin")
        page.fill("#admin-token", ADMIN)
        page.press("#admin-token", "Enter")
        page.wait_for_selector("#admin-main:not([hidden])")
        page.fill("#import-name", "tutor")
        page.set_input_files("#import-file", str(bad))
        page.click("#import-form button[type=submit]")
        page.wait_for_selector("#import-status.error")
        assert "bad.jsonl:2" in page.inner_text("#import-status")  # the file and line at fault
        page.set_input_files("#import-file", str(good))
        page.click("#import-form button[type=submit]")
        page.wait_for_function("() => document.querySelector('#import-status').textContent.includes('tasks added')")
        assert "tutor: 1 prompts, 4 tasks added" in page.inner_text("#import-status")  # rate × 2 + rank + compare
        page.wait_for_selector("tr[data-project='tutor']")
        page.fill("#annotator-name", "ann")
        page.press("#annotator-name", "Enter")
        page.wait_for_selector("li[data-annotator='ann'] code.link")
        link = page.inner_text("li[data-annotator='ann'] code.link")
        assert link.startswith(server.url + "/#token=")
        screenshot(page, "admin")
        annotator = browser.new_page(viewport={"width": 1280, "height": 800})
        annotator.goto(link)
        annotator.wait_for_selector("#view-task:not([hidden])")
        assert annotator.inner_text("#who") == "ann"
        if annotator.get_attribute("#view-task", "data-kind") == "rate":
            annotator.keyboard.press("5")
        elif annotator.get_attribute("#view-task", "data-kind") == "compare":
            annotator.keyboard.press("a")
            annotator.keyboard.press("2")
        else:
            annotator.keyboard.press("1")
            annotator.keyboard.press("2")
        annotator.keyboard.press("Enter")
        annotator.wait_for_function("() => document.querySelector('#progress').textContent.startsWith('1 done')")
        page.click("tr[data-project='tutor'] button.progress")
        page.wait_for_selector("#progress-view:not([hidden])")
        assert "ann" in page.inner_text("#progress-annotators")
        with page.expect_download() as got:
            page.click("tr[data-project='tutor'] button.export")
        exported = Path(got.value.path()).read_text()
        browser.close()
    assert refused == []
    assert len([line for line in exported.splitlines() if line.strip()]) >= 1
    db = Database(db_url)
    with db.tx() as s:
        project = s.scalar(select(Project).where(Project.name == "tutor"))
        assert project is not None and s.scalar(select(Annotator.name)) == "ann"
        assert len(list(s.scalars(select(Task).where(Task.project_id == project.id)))) == 4
    db.dispose()


def screenshot(page, name: str) -> None:
    """With RLHFKIT_SCREENSHOTS=DIR, save the page as DIR/feedback-NAME.png (docs/screenshots/ is made this way)."""
    if os.environ.get("RLHFKIT_SCREENSHOTS"):
        shots = Path(os.environ["RLHFKIT_SCREENSHOTS"])
        shots.mkdir(parents=True, exist_ok=True)
        page.evaluate("() => window.scrollTo(0, 0)")  # a full-page shot from the top, the sticky header in place
        page.screenshot(path=str(shots / f"feedback-{name}.png"), full_page=True)


def next_shown(page, shown: str) -> None:
    """Wait until the page shows another task than assignment ``shown``, or the done view. (A function, not an
    expression string: the page's CSP forbids eval, which a string predicate needs.)"""
    page.wait_for_function("(shown) => document.querySelector('#view-task').dataset.assignment !== shown "
                           "|| !document.querySelector('#view-done').hidden", arg=shown)


def test_an_arena_pair_is_judged_blind_with_one_key_each(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    from rlhfkit.feedback.arena import make_arena

    from .test_arena import eval_folder

    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    info = make_arena(db, "arena", eval_folder(tmp_path))
    server = server_factory(db_url)
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    keys = ["a", "b", "t", "x", "a"]
    pressed = {}
    with playwright.sync_playwright() as p:
        browser, page, refused = open_page(p, 1280, 800)
        page.goto(f"{server.url}/#token={token}")
        for key in keys:
            page.wait_for_selector("#view-task:not([hidden])")
            assert page.get_attribute("#view-task", "data-kind") == "arena"
            body = page.inner_text("#task-body")
            assert "ppo" not in body and "sft" not in body and "both bad" in page.inner_text("#keys")  # blind
            if not pressed:
                screenshot(page, "arena")
            shown = page.get_attribute("#view-task", "data-assignment")
            pressed[int(shown)] = key
            page.keyboard.press(key)  # one key answers: no Enter
            next_shown(page, shown)
        page.wait_for_selector("#view-done:not([hidden])")
        browser.close()
    assert refused == [] and info["tasks"] == len(keys)
    with db.tx() as s:
        rows = s.execute(select(Answer.assignment_id, Assignment.display_order, Answer.payload)
                         .join(Assignment, Assignment.id == Answer.assignment_id)).all()
    db.dispose()
    choice = {"a": "a", "b": "b", "t": "tie", "x": "both_bad"}
    assert {a: p["choice"] for a, _, p in rows} == {a: choice[k] for a, k in pressed.items()}
    for _, order, p in rows:  # the stored side is the task's position of the answer shown under that letter
        assert p["better"] == ({"a": order[0], "b": order[1]}.get(p["choice"])) and p["shown"] == order


def test_a_tied_ranking_and_none_acceptable_are_given_with_keys(tmp_path, server_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    three = {**PAIR, "responses": PAIR["responses"] + ["The sky is blue because blue is a nice colour."]}
    other = {**three, "prompt": "Why is the sea salty?"}
    import_candidates(db, "tutor", write_jsonl(tmp_path / "three.jsonl", [three, other]), "rank")
    server = server_factory(db_url)
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    with playwright.sync_playwright() as p:
        browser, page, _ = open_page(p)
        page.goto(f"{server.url}/#token={token}")
        page.wait_for_selector("#view-task:not([hidden])")
        first = page.get_attribute("#view-task", "data-assignment")
        page.keyboard.press("1")  # response 1 (as shown) first,
        page.keyboard.press("Shift+Digit2")  # response 2 tied with it,
        page.keyboard.press("3")  # response 3 next
        assert [page.input_value(f"select[data-rank-id] >> nth={i}") for i in range(3)] == ["1", "1", "2"]
        screenshot(page, "rank-tie")
        page.keyboard.press("Enter")
        next_shown(page, first)
        page.wait_for_selector("#view-task:not([hidden])")
        second = page.get_attribute("#view-task", "data-assignment")
        page.keyboard.press("n")  # none is acceptable, nothing ranked
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-done:not([hidden])")
        browser.close()
    with db.tx() as s:
        rows = dict((a, (order, p)) for a, order, p in s.execute(
            select(Answer.assignment_id, Assignment.display_order, Answer.payload)
            .join(Assignment, Assignment.id == Answer.assignment_id)).all())
    db.dispose()
    order, tied = rows[int(first)]
    assert tied["ranking"] == [sorted(order[:2]), [order[2]]] and tied["none_acceptable"] is False
    assert rows[int(second)][1]["ranking"] == [] and rows[int(second)][1]["none_acceptable"] is True


def test_an_edit_task_with_a_clip_plays_it_and_the_transcript_edit_is_stored(tmp_path, server_factory):
    """The asr recipe's task: the annotator hears the clip (served from the app's media folder, fetched with the
    token, played by an <audio> element under the page's CSP) and edits the model's transcript into what was said."""
    playwright = pytest.importorskip("playwright.sync_api")
    from rlhfkit.data.speech import SAMPLE_RATE, read_wav, write_wav

    shipped = sorted((Path(__file__).resolve().parents[2] / "src" / "rlhfkit" / "recipes" / "asr" / "audio").glob("*.wav"))
    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "clip.wav", read_wav(shipped[0]))  # a clip the data build kept: real synthetic speech
    seconds = len(read_wav(shipped[0])) / SAMPLE_RATE
    said = "hello i'm calling about my order number four five two"
    record = {"prompt": "A speech recogniser heard a customer-service call. Its best guesses, most likely first:\n"
                        "1. the goal i am talking about my dog\nWrite what the speaker said, as a plain transcript.",
              "response": "the goal i am talking about my dog number four five two", "audio": "clip.wav", "model": "sft"}
    db_url = str(tmp_path / "feedback.db")
    db = Database(db_url)
    import_candidates(db, "asr", write_jsonl(tmp_path / "cand.jsonl", [record, {**record, "audio": "gone.wav",
                                                                                  "response": "something else"}]), "edit")
    server = server_factory(db_url, "--media", str(media))
    token = httpx.post(server.url + "/api/admin/annotators", json={"name": "ann"}, headers=auth(ADMIN)).json()["token"]
    with playwright.sync_playwright() as p:
        browser, page, refused = open_page(p)
        page.goto(server.url + "/")
        page.fill("#token", token)
        page.press("#token", "Enter")
        page.wait_for_selector("#view-task:not([hidden])")
        if "something else" in page.input_value("#edit-text"):  # the task whose clip is missing: said, then skipped
            page.wait_for_function("() => document.querySelector('#status').textContent.includes('could not be loaded')")
            assignment = page.get_attribute("#view-task", "data-assignment")
            page.keyboard.press("Escape")
            page.keyboard.press("s")
            next_shown(page, assignment)
        page.wait_for_selector("#clip:not([hidden]) audio")
        page.wait_for_function("() => document.querySelector('#clip-audio').src.startsWith('blob:')")
        duration = page.evaluate("""() => new Promise((done) => {
            const a = document.querySelector('#clip-audio');
            if (a.readyState >= 1) return done(a.duration);
            a.addEventListener('loadedmetadata', () => done(a.duration));
        })""")
        assert duration == pytest.approx(seconds, abs=0.1)
        assignment = page.get_attribute("#view-task", "data-assignment")
        page.fill("#edit-text", said)
        page.keyboard.press("Control+Enter")
        next_shown(page, assignment)
        browser.close()
    assert refused == []
    with db.tx() as s:
        answers = s.execute(select(Answer.payload)).scalars().all()
    db.dispose()
    assert [a["edited"] for a in answers if "edited" in a] == [said]
    # the clip is the task's annotator's only: another annotator cannot fetch it
    other = httpx.post(server.url + "/api/admin/annotators", json={"name": "other"}, headers=auth(ADMIN)).json()["token"]
    assert httpx.get(server.url + f"/api/assignments/{assignment}/audio", headers=auth(other)).status_code in (403, 404)
