import pytest

from rlhfkit.judges import get_judge

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
