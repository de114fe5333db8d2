"""The asr recipe's sentences: spoken-style English written for this project, as people say it.

Five kinds of speech, each a set of templates with slots (names, dates, numbers, places, products)
filled from the lists below with a seeded generator, so the same command writes the same sentences:

  call       customer-service calls (orders, bills, deliveries, accounts)
  classroom  questions and answers in a lesson
  note       dictated notes and reminders
  numbers    phone numbers, amounts, times, measurements said aloud
  names      names, places and dates in a sentence

Numbers are written as words, the way a recogniser's dictionary spells them ("four five two", "twenty
twenty six"); the references have no punctuation beyond apostrophes, lower case, so WER compares words.

  python scripts/asr_sentences.py --n 480 --out sentences.txt    (one "kind<TAB>sentence" per line)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

DIGITS = "zero one two three four five six seven eight nine".split()
FIRST = ["anna", "david", "maria", "james", "sarah", "peter", "emma", "daniel", "linda", "thomas", "grace", "michael",
         "laura", "robert", "helen", "steven", "julia", "mark", "rachel", "paul", "susan", "kevin", "alice", "brian"]
LAST = ["smith", "johnson", "brown", "taylor", "wilson", "davies", "evans", "thomas", "roberts", "walker", "wright",
        "green", "hall", "wood", "clarke", "jackson", "white", "harris", "martin", "cooper", "king", "baker"]
CITIES = ["boston", "denver", "chicago", "seattle", "dallas", "portland", "atlanta", "phoenix", "houston", "miami"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
            "twelfth", "fifteenth", "twentieth", "twenty first", "twenty third", "thirtieth"]
YEARS = ["twenty twenty four", "twenty twenty five", "twenty twenty six", "nineteen ninety nine", "two thousand ten"]
SMALL = ["two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve", "fifteen", "twenty", "thirty",
         "forty", "fifty", "sixty"]
HOURS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
MINUTES = ["o'clock", "fifteen", "thirty", "forty five", "ten", "twenty"]
PRODUCTS = ["laptop", "phone", "printer", "jacket", "coffee machine", "desk lamp", "washing machine", "bicycle",
            "camera", "blender", "keyboard", "television"]
PROBLEMS = ["arrived damaged", "never arrived", "stopped working", "is the wrong size", "was charged twice",
            "came without the charger", "is missing a part", "makes a loud noise"]
SUBJECTS = ["fractions", "the water cycle", "photosynthesis", "the solar system", "long division", "volcanoes",
            "the roman empire", "magnets", "the human heart", "rivers", "electricity", "the seasons"]
ANIMALS = ["frogs", "bees", "whales", "owls", "spiders", "penguins", "sharks", "bats"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "grey"]
ITEMS = ["milk", "bread", "eggs", "batteries", "stamps", "printer paper", "apples", "rice", "coffee", "soap"]
PEOPLE = ["the doctor", "the dentist", "the bank", "the school", "the plumber", "my manager", "the landlord",
          "the garage"]

TEMPLATES = {
    "call": [
        "hello i'm calling about my order number {d3} which {problem}",
        "hi my name is {first} {last} and my {product} {problem}",
        "i would like to return the {product} i bought last {day}",
        "can you tell me when my {product} will be delivered",
        "my account number is {d4} {d4b}",
        "i was charged {small} dollars more than i expected on my last bill",
        "the delivery driver came on {day} but nobody was home",
        "could you please send the refund to my card ending in {d4}",
        "i have been waiting on hold for {small} minutes",
        "yes the postcode is {d3} {d3b}",
        "i need to change the address on my account to {city}",
        "can i speak to someone about cancelling my subscription",
        "the tracking number you sent me doesn't work",
        "i ordered the {colour} one but you sent me the {colour2} one",
        "is it possible to get a replacement {product} before {day}",
        "thank you that's all i needed have a nice day",
        "my internet has been down since {day} morning",
        "could you spell your last name for me please",
        "i'd like to book an engineer visit for {day} afternoon",
        "the price on the website said {small} dollars",
    ],
    "classroom": [
        "can you explain {subject} again please",
        "why do {animals} live near water",
        "what is {small} times {digit}",
        "is {subject} going to be on the test on {day}",
        "miss i don't understand the second question",
        "how many planets are there in the solar system",
        "what happens to water when it freezes",
        "can we work in pairs for the {subject} project",
        "the answer is {small} because you add them together",
        "why is the sky blue in the day and dark at night",
        "do we need to show our working for question {digit}",
        "what's the difference between weather and climate",
        "can i borrow a {colour} pencil",
        "how do {animals} find their way home",
        "i think the answer to number {digit} is {small}",
        "please turn to page {small} in your books",
        "who wrote the story we read on {day}",
        "what is half of {small}",
    ],
    "note": [
        "remind me to call {people} on {day} at {hour} {minute}",
        "buy {item} and {item2} on the way home",
        "meeting with {first} {last} moved to {day} the {ordinal}",
        "note to self send the report to {first} before {day}",
        "pick up the kids from school at {hour} {minute}",
        "the rent is due on the {ordinal} of {month}",
        "pay the electricity bill of {small} dollars this week",
        "book a table for {digit} people on {day} night",
        "ask {first} about the budget for {month}",
        "renew the car insurance before the {ordinal} of {month}",
        "water the plants and feed the cat",
        "flight to {city} leaves at {hour} {minute} on {day}",
        "call {people} to move my appointment to {day}",
        "finish the slides for the {month} review",
        "take the {colour} folder to the office tomorrow",
    ],
    "numbers": [
        "my phone number is {d3} {d3b} {d4}",
        "the total comes to {small} dollars and {small2} cents",
        "the meeting starts at {hour} {minute}",
        "it is about {small} miles from here to {city}",
        "the room number is {d3}",
        "we need {small} chairs and {digit} tables",
        "the temperature today is {small} degrees",
        "set a timer for {small} minutes",
        "the code for the door is {d4}",
        "the train leaves from platform {digit} at {hour} {minute}",
        "i was born in {year}",
        "the package weighs {small} pounds",
    ],
    "names": [
        "my name is {first} {last} and i live in {city}",
        "please ask for {first} when you arrive",
        "{first} {last} will meet you at the station on {day}",
        "the appointment is on {day} the {ordinal} of {month}",
        "we moved to {city} in {year}",
        "i'm flying from {city} to {city2} on the {ordinal}",
        "this is {first} from the front desk",
        "could you put me through to {first} {last}",
        "her birthday is on the {ordinal} of {month}",
        "the conference in {city} is in {month} {year}",
    ],
}


def fill(template: str, rng: random.Random) -> str:
    def pick(seq: list[str], avoid: str | None = None) -> str:
        choice = rng.choice(seq)
        while avoid is not None and choice == avoid and len(seq) > 1:
            choice = rng.choice(seq)
        return choice

    colour, small, city, item = pick(COLOURS), pick(SMALL), pick(CITIES), pick(ITEMS)
    slots = {
        "d3": " ".join(pick(DIGITS) for _ in range(3)), "d3b": " ".join(pick(DIGITS) for _ in range(3)),
        "d4": " ".join(pick(DIGITS) for _ in range(4)), "d4b": " ".join(pick(DIGITS) for _ in range(4)),
        "digit": pick(DIGITS[2:]), "small": small, "small2": pick(SMALL, small), "first": pick(FIRST), "last": pick(LAST),
        "city": city, "city2": pick(CITIES, city), "day": pick(DAYS), "month": pick(MONTHS), "ordinal": pick(ORDINALS),
        "year": pick(YEARS), "hour": pick(HOURS), "minute": pick(MINUTES), "product": pick(PRODUCTS),
        "problem": pick(PROBLEMS), "subject": pick(SUBJECTS), "animals": pick(ANIMALS), "colour": colour,
        "colour2": pick(COLOURS, colour), "item": item, "item2": pick(ITEMS, item), "people": pick(PEOPLE),
    }
    return " ".join(template.format(**slots).split())


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (kind, sentence) pairs: every template once, then templates drawn in turn until ``n``."""
    rng = random.Random(seed)
    pool = [(kind, t) for kind, ts in TEMPLATES.items() for t in ts]
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    round_no = 0
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        for kind, template in order:
            text = fill(template, rng)
            if text not in seen:
                seen.add(text)
                out.append((kind, text))
            if len(out) == n:
                break
        round_no += 1
        if round_no > 100:
            raise ValueError(f"only {len(out)} distinct sentences from the templates; ask for fewer than {n}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.write_text("".join(f"{k}\t{s}\n" for k, s in sentences(a.n, a.seed)), encoding="utf-8")


if __name__ == "__main__":
    main()
