import json
from pathlib import Path

import pytest

from rlhfkit.judges import get_judge
from rlhfkit.judges.recipes import mark_of, verdict_of

TUTOR = Path(__file__).resolve().parents[2] / "src" / "rlhfkit" / "recipes" / "tutor"

WRITER = [
    (
        {"prompt": "Rewrite this in our house style (concise and friendly):\n\nResidents of Park Street are advised that, "
                   "in order to facilitate essential repairs to the water main, the water supply to properties in this "
                   "area will be temporarily interrupted on Monday 20 January between the hours of 8 am and 12 noon. "
                   "Residents are advised to store a sufficient quantity of water for drinking and cooking purposes "
                   "prior to this period.",
         "keywords": ["park street", "monday 20 january", "8 am and 12 noon"]},
        "On Monday 20 January, the water on Park Street will be off from 8 am and 12 noon while we fix the main. "
        "Please keep some water for drinking and cooking. Thanks!",
    ),
    (
        {"prompt": "Rewrite this in our house style (concise and friendly):\n\nIt gives us great pleasure to announce "
                   "that our IT team has been awarded the Innovation Prize in recognition of its outstanding work on "
                   "the Harbour project. The award will be formally presented at a ceremony to be held in Brighton on "
                   "Tuesday 6 May. This is a tremendous achievement, and we extend our warmest congratulations to all "
                   "those involved.",
         "keywords": ["it team", "innovation prize", "harbour", "brighton", "tuesday 6 may"]},
        "Great news: our IT team has won the Innovation Prize for its work on the Harbour project! It will be "
        "presented in Brighton on Tuesday 6 May. Huge congratulations to everyone involved.",
    ),
    (
        # No keywords: the judge falls back to the draft's numbers and names.
        {"prompt": "Rewrite this in our house style (concise and friendly):\n\nPursuant to the decision of the board, "
                   "the office at Kingsway will commence closing at 4 pm on Fridays with effect from 3 March. Staff are "
                   "requested to ensure that all work is completed prior to this time."},
        "From 3 March, our Kingsway office closes at 4 pm on Fridays. Please wrap up your work before then. Thanks!",
    ),
]


def writer_bad_answers(record: dict, good: str) -> list[str]:
    draft = record["prompt"].split("\n\n", 1)[1]
    return [
        draft,  # copied verbatim: not concise, not friendly
        "Please be advised that changes will occur. Thanks!",  # friendly and short but the facts are gone
        "Hello hello hello hello hello hello hello hello hello hello hello hello",  # rambling
        good + " " + draft,  # the facts, buried in the original
        "",
    ]


@pytest.mark.parametrize("record,good", WRITER)
def test_writer_prefers_a_concise_friendly_rewrite_that_keeps_the_facts(record, good):
    judge = get_judge("writer")
    bad = writer_bad_answers(record, good)
    scores = judge([record] * (1 + len(bad)), [good] + bad)
    assert scores[0] >= 0.6
    assert all(scores[0] > s for s in scores[1:]), scores
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert scores[-1] == -1.0  # empty


SUPPORT = [
    (
        {"prompt": "I was charged twice for my subscription this month. Can you fix this?",
         "keywords": ["charged twice", "refund"]},
        "I'm sorry you were charged twice this month, that's frustrating. I've checked your account and we'll refund "
        "the extra payment. Here is what happens next:\n1. The refund reaches your card within 5 business days.\n"
        "2. You'll get a confirmation email today.\n3. If it hasn't arrived by Friday, reply to this email.\n"
        "Let me know if there's anything else I can help with.",
    ),
    (
        {"prompt": "My app keeps crashing when I open the camera. What should I do?",
         "keywords": ["camera", "update"]},
        "Thanks for reaching out, and sorry about the crashes. This usually happens with an older version of the app "
        "when the camera opens. Please try these steps:\n- Update the app from the store.\n- Restart your phone.\n"
        "- Open the camera again.\nIf it still crashes, reply with your phone model. Happy to help!",
    ),
]


def support_bad_answers(good: str) -> list[str]:
    return [
        "Refund.",  # too short, no empathy, no steps
        "That is obviously your fault. Read the manual. Whatever.",  # rude
        "We are looking into it.",  # vague: no topic, no steps
        "sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry",  # rambling
    ]


@pytest.mark.parametrize("record,good", SUPPORT)
def test_support_prefers_an_acknowledging_answer_with_next_steps_and_a_polite_close(record, good):
    judge = get_judge("support")
    bad = support_bad_answers(good)
    scores = judge([record] * (1 + len(bad)), [good] + bad)
    assert scores[0] >= 0.7
    assert all(scores[0] > s for s in scores[1:]), scores
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_support_gives_credit_for_each_part_it_measures():
    judge = get_judge("support")
    record = {"prompt": "My parcel has not arrived.", "keywords": ["parcel"]}
    base = "Your parcel is on its way and should arrive soon, the courier has it and tracking shows it moving today."
    with_ack = "I'm sorry your parcel is late. " + base
    with_steps = with_ack + " 1. Check the tracking link. 2. Ask a neighbour."
    with_close = with_steps + " Let me know if it does not come."
    s = judge([record] * 4, [base, with_ack, with_steps, with_close])
    assert s[0] < s[1] < s[2] < s[3]


def tutor_record(question: str, student_answer: str | None = None) -> dict:
    """The recipe's own prompt record for ``question`` (and the student's answer), from prompts.jsonl or eval.jsonl."""
    for split in ("prompts", "eval"):
        for line in (TUTOR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("question", rec["prompt"]) == question and student_answer in (None, rec.get("student_answer")):
                return rec
    raise LookupError(question)


def test_tutor_on_9_x_6_answered_56_ranks_the_kind_correction_first_and_praise_of_the_wrong_answer_below_any_right_verdict():
    record = tutor_record("What is 9 x 6?", "56")
    assert record["verdict"] == "incorrect" and record["answer_key"] == "54"
    replies = {
        "clear": "Not quite. 9 x 6 = 54, not 56. A trick for the nine times table: 9 x 6 is 10 x 6 take away one 6, "
                 "and 60 - 6 = 54. You were very close, so keep practising!",
        "vague": "Not quite. Try again, you can do it!",
        "praise": "Great job! 56 is correct. You really know your times tables.",
        "stuffing": "54 nine six times table 54 nine six times table.",
    }
    s = dict(zip(replies, get_judge("tutor")([record] * len(replies), list(replies.values()))))
    assert s["clear"] > s["vague"] > max(s["praise"], s["stuffing"]), s
    assert s["clear"] >= 0.8
    assert s["praise"] < 0.4 <= s["vague"]  # any reply with the right verdict outscores praise of wrong work


# (question, student's answer, clear reply with the right verdict, vague reply with the right verdict, wrong verdict)
GRADING = [
    ("What is the capital of Spain?", "Barcelona",
     "Not quite. Barcelona is a big, famous city in Spain, but it is not the capital. The capital of Spain is Madrid, "
     "right in the middle of the country. Good try!",
     "Not quite. Have another go!",
     "Well done! Barcelona is the capital of Spain."),
    ("What is the past tense of 'swim'?", "swimmed",
     "Not quite. The past tense of swim is swam, as in 'I swam in the sea.' Swim is an irregular verb, so it does not "
     "just add -ed. Great effort!",
     "Not quite. Check your spelling of that word.",
     "Correct! Swimmed is the past tense of swim."),
    ("Add the punctuation: 'where are you going'", None,
     "Partly right. Mark: 1/2. You started with a capital letter, well done. But it is a question, so it needs a "
     "question mark at the end: Where are you going?",
     "Partly right. Mark: 1/2. Nearly there!",
     "Correct! Mark: 2/2. That sentence is perfect."),
    ("What is the capital of Japan?", "Tokyo",
     "Correct! Tokyo is the capital of Japan. It is one of the biggest cities in the world. Well done!",
     "Correct! Good work.",
     "Not quite. Tokyo is not the capital of Japan."),
    ("Which planet is closest to the Sun?", "Venus",
     "Not quite. Venus is the second planet from the Sun. The closest planet is Mercury, a small, rocky planet that "
     "goes round the Sun faster than any other. Good try!",
     "Not quite. Keep learning your planets.",
     "Correct! Venus is the closest planet to the Sun."),
]


def stuffing_of(record: dict) -> str:
    """The keywords and the answer key listed twice over, with no sentence around them."""
    return " ".join([record["answer_key"], *record["keywords"]] * 2) + "."


@pytest.mark.parametrize("question,student,clear,vague,wrong", GRADING, ids=[g[0][:30] for g in GRADING])
def test_tutor_ranks_a_clear_right_verdict_over_a_vague_one_over_a_wrong_verdict_or_keyword_stuffing(
        question, student, clear, vague, wrong):
    record = tutor_record(question, student)
    assert verdict_of(clear) == verdict_of(vague) == record["verdict"] != verdict_of(wrong)
    s = get_judge("tutor")([record] * 4, [clear, vague, wrong, stuffing_of(record)])
    assert s[0] > s[1] > max(s[2], s[3]), s
    assert s[0] >= 0.8 and max(s[2], s[3]) < 0.4
    assert all(0.0 <= x <= 1.0 for x in s)


def test_tutor_scores_keyword_stuffing_below_a_plain_reply_even_with_the_right_verdict():
    record = tutor_record("What is 9 x 6?", "56")
    plain = "Not quite. 9 x 6 = 54, not 56. Nine sixes make 54, so you were just one step away."
    stuffed_with_verdict = "Not quite. " + stuffing_of(record)
    looping = "Not quite. The answer is 54. The answer is 54. The answer is 54. The answer is 54."
    s = get_judge("tutor")([record] * 3, [plain, stuffed_with_verdict, looping])
    assert s[0] > max(s[1], s[2]) + 0.2, s


def test_tutor_gives_credit_for_the_right_mark_on_a_rubric():
    record = tutor_record("Add the punctuation: 'where are you going'")
    assert (record["marks"], record["mark"]) == (2, 1)
    reason = " You started with a capital letter, but a question needs a question mark: Where are you going?"
    right, wrong, missing = (f"Partly right. Mark: 1/2.{reason}", f"Partly right. Mark: 0/2.{reason}", f"Partly right.{reason}")
    s = get_judge("tutor")([record] * 3, [right, wrong, missing])
    assert s[0] > s[1] and s[0] > s[2]


def test_tutor_prefers_a_plain_explanation_to_keyword_stuffing_on_an_explanation_prompt():
    record = tutor_record("Why do stars twinkle?")
    plain = ("Stars twinkle because their light passes through the air around Earth. The air is always moving, so the "
             "light bends a little this way and that. That makes a star look like it blinks. We call this blanket of air "
             "the atmosphere.")
    stuffed = " ".join(record["keywords"] * 4)
    keyword_sentences = " ".join(f"The {k} is {k}." for k in record["keywords"] * 3)
    s = get_judge("tutor")([record] * 4, [plain, stuffed, keyword_sentences, ""])
    assert s[0] >= 0.8 and s[0] > max(s[1], s[2]) + 0.3, s
    assert s[3] == 0.0  # empty


@pytest.mark.parametrize("reply,verdict", [
    ("Correct! 8 x 7 = 56.", "correct"),
    ("That's right: Paris is the capital.", "correct"),
    ("Well done, 56 is right!", "correct"),  # praise tells the child they are right
    ("Partly right. Mark: 1/2. You named water.", "partly"),
    ("Not quite. The answer is 54.", "incorrect"),
    ("**Not correct.** It is 54.", "incorrect"),
    ("That's not right: it is Madrid.", "incorrect"),
    ("56 is close, but the answer is 54.", None),  # no verdict at the start
    ("Good try! The answer is 54.", None),
    ("", None),
])
def test_verdict_of_reads_the_verdict_a_reply_opens_with(reply, verdict):
    assert verdict_of(reply) == verdict


def test_mark_of_reads_the_mark_near_the_start_of_a_reply():
    assert mark_of("Partly right. Mark: 1/2. Well done.") == (1, 2)
    assert mark_of("Partly right, 3 out of 4 marks.") == (3, 4)
    assert mark_of("Not quite. 1/2 + 1/4 is 3/4.") is None  # a fraction is not a mark
