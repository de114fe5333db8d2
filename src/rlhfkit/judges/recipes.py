"""Gold judges of the ``writer``, ``support`` and ``tutor`` recipes (registered in :mod:`rlhfkit.judges`).

Each judge is a transparent sum of a few measurable qualities, so a reader can see why an answer
scored what it did and what a policy could exploit. ``writer`` and ``support`` return scores in [−1, 1]:
the positive part (weights summing to 1) lies in [0, 1]; penalties for copying, repetition or rudeness
pull it down, and an empty answer scores −1. ``tutor`` returns scores in [0, 1]: its gates (the verdict,
the guard against keyword stuffing) multiply rather than subtract. A good answer scores about 0.7 or
more, a poor one below 0.3.
"""

from __future__ import annotations

import re

from rlhfkit.data.formats import prompt_text
from rlhfkit.judges import keyword_coverage, reading_grade, register


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower().replace("\u2019", "'"))


def phrase_count(text: str, phrases: list[str]) -> int:
    """How many of ``phrases`` occur in ``text`` as whole words (case-insensitive); each counted once."""
    low = " " + " ".join(tokens(text)) + " "
    return sum(f" {' '.join(tokens(p))} " in low for p in phrases)


def band(x: float, zero_lo: float, lo: float, hi: float, zero_hi: float) -> float:
    """1 inside [lo, hi], falling linearly to 0 at zero_lo and zero_hi."""
    if x < lo:
        return max(0.0, (x - zero_lo) / (lo - zero_lo))
    if x > hi:
        return max(0.0, (zero_hi - x) / (zero_hi - hi))
    return 1.0


def repetition(text: str, n: int = 3) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0: none; rambling loops approach 1)."""
    w = tokens(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def copied(text: str, source: str, n: int = 5) -> float:
    """Share of the answer's word n-grams found verbatim in ``source``."""
    w, s = tokens(text), tokens(source)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    src = {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
    return sum(g in src for g in grams) / len(grams) if grams else 0.0


def facts_of(record: dict, source: str) -> list[str]:
    """The record's ``keywords``; without them, the numbers and capitalised names of ``source``."""
    if record.get("keywords"):
        return list(record["keywords"])
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", source):
        for i, word in enumerate(re.findall(r"[A-Za-z0-9][\w:]*", sentence)):
            if word[0].isdigit() or (i > 0 and word[0].isupper()):  # a sentence's first word is capitalised anyway
                found.append(word)
    return list(dict.fromkeys(found))


# ---- writer: concise, friendly rewrites that keep the draft's facts -----------------------------------

FORMAL = ["in order to", "prior to", "facilitate", "pursuant", "hereby", "in accordance with", "are advised",
          "are requested", "commence", "utilise", "utilize", "aforementioned", "endeavour", "with respect to",
          "at this point in time", "sufficient quantity", "it gives us great pleasure", "we wish to inform",
          "be advised", "notwithstanding", "henceforth", "formally", "in recognition of", "the undersigned"]
FRIENDLY = ["you", "your", "we", "our", "thanks", "thank you", "please", "great", "happy", "glad", "welcome", "hope",
            "let us know", "feel free", "congratulations", "everyone", "enjoy", "see you", "don't", "we're", "you'll",
            "it's", "we'll", "can't", "huge", "good news"]


def draft_of(record: dict) -> str:
    """The text to rewrite: the record's ``draft``, or the prompt after its instruction line(s)."""
    if isinstance(record.get("draft"), str):
        return record["draft"]
    text = prompt_text(record)
    _, sep, rest = text.partition("\n\n")
    return rest.strip() if sep and rest.strip() else text


def writer_score(record: dict, response: str) -> float:
    """score = 0.35·facts + 0.25·concision + 0.2·plain words + 0.2·friendliness − copying − rambling, in [−1, 1].

    facts: share of ``keywords`` kept (stem match); concision: 1 for 30–80% of the draft's length, 0 at
    ≥120% or empty; plain words: 1 at reading grade ≤ 6, 0 at ≥ 14, −0.25 per stiff formal phrase;
    friendliness: 3 distinct friendly markers (you/we, thanks, please, "!", contractions …) for full credit;
    copying: up to −0.5 when more than 40% of the answer's 5-grams are the draft's; rambling: −(repeated 3-gram share).
    """
    n = len(tokens(response))
    if n == 0:
        return -1.0
    draft = draft_of(record)
    keep = facts_of(record, draft)
    facts = keyword_coverage(response, keep) if keep else 1.0
    concision = band(n / max(len(tokens(draft)), 1), 0.0, 0.3, 0.8, 1.2)
    plain = max(0.0, min(1.0, 1.0 - (reading_grade(response) - 6.0) / 8.0) - 0.25 * phrase_count(response, FORMAL))
    friendly = min(1.0, (phrase_count(response, FRIENDLY) + ("!" in response)) / 3.0)
    copy_penalty = 0.5 * max(0.0, (copied(response, draft) - 0.4) / 0.6)
    score = 0.35 * facts + 0.25 * concision + 0.2 * plain + 0.2 * friendly - copy_penalty - repetition(response)
    return max(-1.0, min(1.0, score))


@register("writer")
def writer(prompts: list[dict], responses: list[str]) -> list[float]:
    """Concise, friendly rewrites of a draft that keep its facts (see :func:`writer_score`)."""
    return [writer_score(p, r) for p, r in zip(prompts, responses)]


# ---- support: acknowledge, answer, give next steps, close politely ------------------------------------

EMPATHY = ["sorry", "apologise", "apologize", "apologies", "i understand", "i can see", "that sounds", "frustrating",
           "thanks for reaching out", "thank you for reaching out", "thanks for letting us know",
           "thank you for letting us know", "thanks for getting in touch", "thank you for contacting", "i hear you",
           "understandably", "i know how", "inconvenience", "thanks for asking", "thanks for your patience"]
CLOSERS = ["let me know", "let us know", "happy to help", "anything else", "hope this helps", "feel free",
           "reach out", "have a great day", "have a good day", "have a nice day", "best regards", "kind regards",
           "we're here", "here to help", "get back to us", "glad to help"]
ORDINALS = ["first", "firstly", "then", "next", "after that", "finally", "once", "second", "third", "lastly"]
ACTIONS = ["go to", "click", "open", "check", "restart", "reset", "reply", "contact", "send", "try", "visit",
           "select", "enter", "call", "update", "sign in", "log in", "tap", "choose", "email"]
RUDE = ["stupid", "your fault", "not my problem", "calm down", "obviously", "whatever", "deal with it",
        "read the manual", "we can't help", "nothing we can do", "idiot", "ridiculous", "as i already said"]
STEP_LINE = re.compile(r"(?m)(?:^\s*(?:\d+[.)]|[-*•])\s+\S|(?:^|\s)\d[.)]\s+\S)")


def steps_score(text: str) -> float:
    """Concrete next steps: 1 for two or more numbered/bulleted steps, 0.7 for ordered prose, 0.4 for one action."""
    if len(STEP_LINE.findall(text)) >= 2:
        return 1.0
    if phrase_count(text, ORDINALS) >= 2 and phrase_count(text, ACTIONS) >= 1:
        return 0.7
    return 0.4 if phrase_count(text, ACTIONS) >= 1 else 0.0


def topic_words(record: dict) -> list[str]:
    """The record's ``keywords``; without them, the customer message's longer words (a rough topic)."""
    if record.get("keywords"):
        return list(record["keywords"])
    return list(dict.fromkeys(w for w in tokens(prompt_text(record)) if len(w) >= 6))[:6]


def support_score(record: dict, response: str) -> float:
    """score = 0.2·acknowledgement + 0.3·topic + 0.25·next steps + 0.1·polite close + 0.15·length − rudeness − rambling.

    acknowledgement: an empathy phrase in the first 30 words (1) or later (0.5); topic: share of ``keywords``
    mentioned; next steps: see :func:`steps_score`; close: a polite closing phrase in the last 30 words;
    length: 1 for 30–140 words, 0 at 0 and at 280; rudeness: −0.5 per rude phrase; rambling: −(repeated 3-gram share).
    Range [−1, 1].
    """
    w = tokens(response)
    if not w:
        return -1.0
    head, tail = " ".join(w[:30]), " ".join(w[-30:])
    ack = 1.0 if phrase_count(head, EMPATHY) else 0.5 if phrase_count(response, EMPATHY) else 0.0
    words = topic_words(record)
    topic = keyword_coverage(response, words) if words else 1.0
    close = 1.0 if phrase_count(tail, CLOSERS) else 0.0
    length = band(len(w), 0, 30, 140, 280)
    score = (0.2 * ack + 0.3 * topic + 0.25 * steps_score(response) + 0.1 * close + 0.15 * length
             - 0.5 * phrase_count(response, RUDE) - repetition(response))
    return max(-1.0, min(1.0, score))


@register("support")
def support(prompts: list[dict], responses: list[str]) -> list[float]:
    """A support agent's reply: acknowledges, answers the topic, gives next steps, closes politely (see :func:`support_score`)."""
    return [support_score(p, r) for p, r in zip(prompts, responses)]


# ---- tutor: explains to a 10-year-old, and marks a student's answer against the key ---------------------
#
# An explanation prompt carries ``keywords``: the ideas a good explanation names. A grading prompt also
# carries its gold fields beside the ``prompt``: ``verdict`` (one of VERDICTS), ``answer_key`` and, where a
# rubric gives marks, ``marks`` (out of) and the gold ``mark``.

VERDICTS = ("correct", "partly", "incorrect")
# The openings that state each verdict; the recipe's convention is "Correct!", "Partly right." and "Not
# quite.". Praise tells a child they are right, so a reply opening "Well done!" gives the verdict "correct":
# praise of a wrong answer is a wrong verdict, not a missing one. Checked in this order.
VERDICT_OPENINGS = {
    "partly": ["partly right", "partly correct", "partly", "half right"],
    "incorrect": ["not quite", "not correct", "not right", "incorrect", "wrong", "no", "that's not right",
                  "that is not right", "that's not correct", "that is not correct"],
    "correct": ["correct", "that's correct", "that is correct", "that's right", "that is right", "right", "yes",
                "well done", "great job", "good job", "excellent", "perfect", "spot on", "brilliant"],
}
MARK = re.compile(r"\bmarks?\b\W*(\d+)\s*(?:/|out of)\s*(\d+)|(\d+)\s*(?:/|out of)\s*(\d+)\s*marks?\b", re.I)
# Words every English sentence is built with and a list of keywords lacks.
FUNCTION_WORDS = set(
    "a an the is are was were be been am it its it's this that that's these those there here and or but so "
    "because if when then than to of in on at for with from by as into out up not no you your you're you've "
    "we our i me my he she they them their his her can could will would do does did don't isn't aren't can't "
    "has have had what which who how why very just also too all some one more most each every such let's".split())
TERM = re.compile(r"\d+(?:[.,/:]\d+)*|[a-z]+(?:'[a-z]+)?")


def verdict_of(response: str) -> str | None:
    """The verdict a reply opens with ("Correct!", "Partly right.", "Not quite." or a synonym), or None."""
    head = tokens(response)[:4]
    for verdict, openings in VERDICT_OPENINGS.items():
        if any(head[:len(t)] == t for t in map(tokens, openings)):
            return verdict
    return None


def mark_of(response: str) -> tuple[int, int] | None:
    """The mark a reply gives near its start ("Mark: 1/2", "1 out of 2 marks") as (mark, out of), or None."""
    m = MARK.search(response[:120])
    if m is None:
        return None
    got, out_of = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(got), int(out_of)


def terms(text: str) -> list[str]:
    """Lower-cased words, with numbers such as 3/4, 0.7 or 3,042 kept whole."""
    return TERM.findall(text.lower().replace("\u2019", "'"))


def term_matches(word: str, key: str) -> bool:
    """A number or a letter matches itself only; a word matches by its stem (the rule of :func:`keyword_coverage`)."""
    return word == key if key[0].isdigit() or len(key) == 1 else word.startswith(key[: max(4, len(key) - 2)])


def content_terms(phrase: str) -> list[str]:
    found = terms(phrase)
    return [t for t in found if t not in FUNCTION_WORDS] or found


def names(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase``: every number of it verbatim, every other content word by its stem."""
    words = terms(text)
    return all(any(term_matches(w, k) for w in words) for k in content_terms(phrase))


def stuffing_guard(text: str, key_terms: set[str]) -> float:
    """1 for plain sentences, falling to 0 for keyword lists, looping phrases or text packed with keywords.

    The smallest of three signs: prose (function words are ≥ 25% of the words that are not numbers; 0 at
    ≤ 10%), loops (1 − 2.5 × the share of repeated 3-grams) and density (words that are the prompt's
    keywords or answer key ≤ 35% of all words; 0 at ≥ 65%). It replaces paying per keyword mentioned,
    which the keyword list itself would win.
    """
    words = terms(text)
    if not words:
        return 0.0
    plain = [w for w in words if not w[0].isdigit()]
    function_share = sum(w in FUNCTION_WORDS for w in plain) / len(plain) if plain else 0.0
    density = sum(any(term_matches(w, k) for k in key_terms) for w in words) / len(words)
    return min(band(function_share, 0.1, 0.25, 1.0, 2.0), max(0.0, 1.0 - 2.5 * repetition(text)),
               band(density, -1.0, 0.0, 0.35, 0.65))


def tutor_score(record: dict, response: str) -> float:
    """A tutor's reply to a 10-year-old, in [0, 1].

    Both kinds: guard = :func:`stuffing_guard`; readable: 1 at reading grade 1–7, 0 at ≥ 12 (or ≤ −4);
    covered: share of the prompt's ``keywords`` named (:func:`names`).
    Explanation prompt: guard · (0.35·readable + 0.45·covered + 0.2·length), length 1 for 30–110 words,
    0 at ≤ 8 and ≥ 220.
    Grading prompt (the record has a ``verdict``): quality = guard · (0.25·readable + 0.45·idea + 0.15·length
    + 0.15·mark), where idea = ½·(the answer key named) + ½·covered (a wrong answer's feedback must say what
    is right), length is 1 for 12–60 words (0 at ≤ 3 and ≥ 120), and mark is 1 when the reply opens with the
    gold mark or the rubric has none. Then the verdict gates it: right verdict 0.4 + 0.6·quality; none
    0.25·quality; wrong 0.1·quality. So any reply with the right verdict outscores every reply with a wrong
    or missing one, and praising a wrong answer scores lowest of all.
    """
    n = len(terms(response))
    if n == 0:
        return 0.0
    keywords = list(record.get("keywords") or [])
    key = record.get("answer_key")
    key_terms = {t for phrase in keywords + ([key] if key else []) for t in content_terms(phrase)}
    guard = stuffing_guard(response, key_terms)
    readable = band(reading_grade(response), -4.0, 1.0, 7.0, 12.0)
    covered = sum(names(response, k) for k in keywords) / len(keywords) if keywords else 1.0
    gold = record.get("verdict")
    if gold not in VERDICTS:
        return guard * (0.35 * readable + 0.45 * covered + 0.2 * band(n, 8, 30, 110, 220))
    idea = 0.5 * names(response, key) + 0.5 * covered if key else covered
    mark = float(mark_of(response) == (record.get("mark"), record["marks"])) if record.get("marks") else 1.0
    quality = guard * (0.25 * readable + 0.45 * idea + 0.15 * band(n, 3, 12, 60, 120) + 0.15 * mark)
    said = verdict_of(response)
    if said == gold:
        return 0.4 + 0.6 * quality
    return (0.25 if said is None else 0.1) * quality


@register("tutor")
def tutor(prompts: list[dict], responses: list[str]) -> list[float]:
    """A tutor's reply to a 10-year-old: a clear explanation, or a verdict on a student's answer and its reason."""
    return [tutor_score(p, r) for p, r in zip(prompts, responses)]


# A transcript is the words said and nothing else: phrases that talk about the transcript, the speaker or the
# recogniser are commentary. Each phrase the reference itself does not hold costs COMMENTARY_COST, to at
# most COMMENTARY_MAX.
COMMENTARY = ("transcript", "here is", "here's", "the speaker", "the caller", "they said", "he said", "she said",
              "i think", "corrected", "correction", "hypothes", "recogni", "guess", "probably", "sounds like",
              "most likely", "the answer is", "should be", "what was said", "it says", "option")
COMMENTARY_COST, COMMENTARY_MAX = 0.2, 0.6


def commentary(response: str, reference: str) -> int:
    """How many commentary phrases (COMMENTARY) the response holds that the reference does not."""
    said, ref = response.lower(), reference.lower()
    return sum(phrase in said and phrase not in ref for phrase in COMMENTARY)


def asr_score(record: dict, response: str) -> float:
    """A corrected transcript, in [0, 1]: 1 − WER against the record's ``reference`` (jiwer's counts, both sides
    normalised; a WER above 1 scores 0), less COMMENTARY_COST per commentary phrase (at most COMMENTARY_MAX)."""
    from rlhfkit.eval.metrics import word_errors

    edits, words, _, _ = word_errors(record["reference"], response)
    penalty = min(COMMENTARY_MAX, COMMENTARY_COST * commentary(response, record["reference"]))
    return max(0.0, 1.0 - edits / words - penalty)


@register("asr")
def asr(prompts: list[dict], responses: list[str]) -> list[float]:
    """A speech recogniser's output, corrected: 1 − WER against what was said, less a cost for commentary."""
    for i, p in enumerate(prompts):
        if not (isinstance(p.get("reference"), str) and p["reference"].strip()):
            raise ValueError(f"judge asr: prompt record {i}: reference: expected the transcript said, a non-empty string")
    return [asr_score(p, r) for p, r in zip(prompts, responses)]
