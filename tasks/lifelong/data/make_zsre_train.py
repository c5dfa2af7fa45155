"""Writes zsre_train.json: the offline ZsRE-format split `ce-bench train-mend` trains MEND on.

    python tasks/lifelong/data/make_zsre_train.py

Templated and synthetic: invented subjects (so no record states a real fact or overlaps the
evaluation set zsre.json), ten relations with a question and a paraphrase each, targets drawn
from per-relation pools, and locality questions from a hand-written list disjoint from
zsre.json's. Deterministic (seed 0). The real ZsRE train split (MEND's zsre_mend_train.json)
loads the same way: `ce-bench train-mend --train zsre_mend_train.json`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

RECORDS = 1200
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "tu",
    "sor",
    "bel",
    "dri",
    "fa",
    "nor",
    "quel",
    "zan",
    "pim",
    "ost",
    "rul",
    "gea",
    "lin",
    "mor",
    "tes",
]

# relation: (subject kind, question, paraphrase, targets)
RELATIONS = {
    "capital": (
        "country",
        "What is the capital of {}?",
        "Which city is the capital of {}?",
        ["Arvel", "Tosca Bay", "Milden", "Orrin", "Kesh", "Paloma", "Stavro", "Idris Port"],
    ),
    "language": (
        "country",
        "What language is spoken in {}?",
        "Which language do the people of {} speak?",
        ["Portuguese", "Finnish", "Swahili", "Tagalog", "Dutch", "Hungarian", "Korean", "Welsh"],
    ),
    "currency": (
        "country",
        "What is the currency of {}?",
        "Which currency is used in {}?",
        ["the krona", "the peso", "the rand", "the dinar", "the lira", "the franc", "the yen"],
    ),
    "maker": (
        "product",
        "Which company makes the {}?",
        "The {} is produced by which company?",
        ["Nokia", "Siemens", "Yamaha", "Philips", "Canon", "Bosch", "Fujitsu", "Olivetti"],
    ),
    "sport": (
        "person",
        "Which sport does {} play?",
        "What sport is {} known for playing?",
        ["tennis", "cricket", "rugby", "volleyball", "golf", "badminton", "water polo"],
    ),
    "occupation": (
        "person",
        "What is the occupation of {}?",
        "What does {} do for a living?",
        ["architect", "surgeon", "novelist", "violinist", "chemist", "pilot", "sculptor"],
    ),
    "birthplace": (
        "person",
        "In which country was {} born?",
        "{} was born in which country?",
        ["Chile", "Norway", "Egypt", "Vietnam", "Ireland", "Peru", "Morocco", "Austria"],
    ),
    "author": (
        "book",
        "Who wrote {}?",
        "{} was written by which author?",
        ["Ada Brenner", "Tomas Reyes", "Mila Koenig", "Oren Vasquez", "Lena Hart", "Ivo Sand"],
    ),
    "genre": (
        "book",
        "What genre of fiction is {}?",
        "{} belongs to which genre?",
        ["science fiction", "mystery", "romance", "horror", "satire", "fantasy", "western"],
    ),
    "founded": (
        "company",
        "In what year was {} founded?",
        "{} was founded in which year?",
        [str(year) for year in range(1901, 2001, 7)],
    ),
}
KINDS = {
    "country": lambda name: name,
    "product": lambda name: f"{name} {random.choice(['X2', 'Pro', 'Mini', '300', 'Air'])}",
    "person": lambda name: f"{name} {make_name().capitalize()}",
    "book": lambda name: f"The {random.choice(['Silent', 'Last', 'Hidden', 'Broken'])} {name}",
    "company": lambda name: f"{name} {random.choice(['Industries', 'Labs', 'Group', 'Works'])}",
}
LOCALITY = [
    ("nq question: what is the boiling point of water in celsius", "100 degrees"),
    ("nq question: which planet is closest to the sun", "Mercury"),
    ("nq question: what gas do plants absorb from the air", "carbon dioxide"),
    ("nq question: how many days are there in a leap year", "366"),
    ("nq question: who painted the mona lisa", "Leonardo da Vinci"),
    ("nq question: what is the chemical symbol for gold", "Au"),
    ("nq question: how many continents are there", "seven"),
    ("nq question: who developed the theory of relativity", "Albert Einstein"),
    ("nq question: what is the tallest mountain in the world", "Mount Everest"),
    ("nq question: what is the freezing point of water in fahrenheit", "32 degrees"),
    ("nq question: which organ pumps blood through the body", "the heart"),
    ("nq question: what is the square root of sixty four", "eight"),
    ("nq question: who wrote romeo and juliet", "William Shakespeare"),
    ("nq question: what colour do you get by mixing blue and yellow", "green"),
    ("nq question: what is the main language of mexico", "Spanish"),
    ("nq question: which animal is known as the king of the jungle", "the lion"),
    ("nq question: what instrument has 88 keys", "the piano"),
    ("nq question: which bird is a symbol of peace", "the dove"),
    ("nq question: what is the longest river in africa", "the Nile"),
    ("nq question: what is the capital city of japan", "Tokyo"),
    ("nq question: who discovered penicillin", "Alexander Fleming"),
    ("nq question: what metal is liquid at room temperature", "mercury"),
    ("nq question: which vitamin does sunlight help the body make", "vitamin D"),
]


def make_name() -> str:
    return "".join(random.choice(SYLLABLES) for _ in range(random.randint(2, 3)))


def record() -> dict:
    relation = random.choice(sorted(RELATIONS))
    kind, question, paraphrase, targets = RELATIONS[relation]
    subject = KINDS[kind](make_name().capitalize())
    true, alt = random.sample(targets, 2)
    loc, loc_ans = random.choice(LOCALITY)
    src = question.format(subject)
    return {
        "subject": subject,
        "src": src,
        "pred": true,
        "rephrase": paraphrase.format(subject),
        "alt": alt,
        "answers": [true],
        "loc": loc,
        "loc_ans": loc_ans,
        "cond": f"{true} >> {alt} || {src}",
    }


def main() -> None:
    random.seed(0)
    records, seen = [], set()
    while len(records) < RECORDS:
        r = record()
        if r["subject"] not in seen:
            seen.add(r["subject"])
            records.append(r)
    out = Path(__file__).with_name("zsre_train.json")
    out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"{len(records)} records -> {out}")


if __name__ == "__main__":
    main()
