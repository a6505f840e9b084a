# SPDX-License-Identifier: Apache-2.0
"""A seeded synthetic routing suite with exact answers (five task families), for GER-style analyses.

Task families (TASKS); "answer span" = a fact sentence the answer depends on, the rest are distractors:

* ``needle``: one "The special magic number for <city> is <7 digits>." in the filler (the needle task of
  Table 3 in small); "What is the special magic number for <city> mentioned in the provided text?".
  Answer span: the needle.
* ``entity_tracking``: 2-3 people each put an object somewhere, then move it 1-3 times (distinct places per
  object); "Where is the <object> now?" -> its last place, named by no other fact. Answer span: that move.
* ``disambiguation``: two people with confusable names (same first name, or same surname) each have a locker
  code; the question names one by full name. Answer span: that person's sentence.
* ``coreference``: a person is introduced; a later sentence gives a code by pronoun only ("She locked the
  safe with the code 4821."); 2-3 people of the other gender state their codes by name. Answer spans: the
  introduction and the pronoun sentence.
* ``multi_hop``: "X's box is red." [-> "The red box contains the blue jar."] -> "The red box / blue jar holds
  the number 7319." (2 or 3 hops), plus two distractor chains of other people. Answer spans: every hop.

An item is {"id", "task", "seed" (its sub-seed), "context", "question", "answer" (a place word or a 4-digit
number), "answer_spans", "distractor_spans"}; spans are [start, end) character offsets into "context".

Facts keep their logical order (a move after the previous move, the pronoun after the introduction) and are
interleaved at random positions with neutral filler sentences until the context has about ``target_words``
words (whitespace-separated; it overshoots by less than one filler sentence, and never drops a fact, so a
target below the facts' own length gives the facts alone). Filler comes from a built-in list of bland
sentences without people or digits, or, when ``filler_text`` is given, from its sentences (consecutive, from
a random start, wrapping; such text may itself hold names or numbers, which this module cannot prevent).

Determinism: item i of task T under ``seed`` uses ``random.Random(sub_seed)``, sub_seed derived by SHA-256
from (seed, T, i), so an item does not depend on the other tasks requested or on ``n_per_task``.

Scoring (:func:`score`): both strings are NFKC-normalised and lower-cased; the answer is correct when it
occurs as a whole word in the first non-blank line of the generation, i.e. not preceded or followed by a
word character (letter, digit, underscore): "The answer is 7319." is right for 7319, "73190" is not.

Run as a script (stdlib only, no package imports): ``python scripts/elastickv/routing_suite.py --out x.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

TASKS = ("needle", "entity_tracking", "disambiguation", "coreference", "multi_hop")
INSTRUCTION = "Read the text and answer the question with a single word or number."

FEMALE = ("Alice", "Maria", "Sofia", "Clara", "Emma", "Nora", "Julia", "Laura", "Anna", "Rosa")
MALE = ("Peter", "David", "Marco", "Tom", "Oscar", "Felix", "Hugo", "Leo", "Paul", "Ivan")
SURNAMES = ("Berg", "Costa", "Novak", "Ferris", "Lindqvist", "Okafor", "Moreau", "Tanaka", "Weber", "Quinn")
PLACES = ("kitchen", "garden", "attic", "cellar", "garage", "library", "balcony", "hallway", "office", "bathroom")
OBJECTS = ("key", "wallet", "umbrella", "notebook", "lamp", "guitar", "basket", "hammer")
CITIES = ("Lisbon", "Nairobi", "Montreal", "Osaka", "Tbilisi", "Reykjavik", "Hanoi", "Krakow", "Adelaide", "Bergen")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "brown")
LOCKED = ("cabinet", "drawer", "chest", "door", "gate", "suitcase")
FILLER = (
    "The weather stayed mild for most of the week.", "A light breeze moved through the trees in the park.",
    "The river was calm and the water looked dark.", "Several clouds drifted slowly across the afternoon sky.",
    "The old clock on the wall ticked quietly.", "Rain had fallen during the night and the streets were damp.",
    "The shop on the corner opened a little later than usual.", "A few leaves had gathered along the edge of the road.",
    "The bus arrived on time and left again without delay.", "The market was busy with the usual morning noise.",
    "Somewhere in the distance a dog barked twice and then fell silent.", "The bookshop smelled of dust and old paper.",
    "The paint on the fence was starting to fade.", "Sunlight came through the window and warmed the floor.",
    "The kettle took a long time to boil that morning.", "The path through the field was muddy after the storm.",
    "The radio played soft music that nobody listened to.", "A thin layer of frost covered the car windows.",
    "The train station was quiet in the early hours.", "The lake reflected the hills on its far side.",
)


def _numbers(rng: random.Random, k: int) -> list[str]:
    return [str(n) for n in rng.sample(range(1000, 10000), k)]


def _merge(rng: random.Random, streams: list[list]) -> list:
    """Interleaves the streams at random, keeping the order inside each stream."""
    streams, out = [list(s) for s in streams if s], []
    while streams:
        s = rng.choice([s for s in streams for _ in s])  # weight by remaining length
        out.append(s.pop(0))
        streams = [s for s in streams if s]
    return out


def _needle(rng: random.Random):
    city = rng.choice(CITIES)
    number = str(rng.randrange(1_000_000, 10_000_000))
    return ([(f"The special magic number for {city} is {number}.", "answer")],
            f"What is the special magic number for {city} mentioned in the provided text?", number)


def _entity_tracking(rng: random.Random):
    n = rng.randint(2, 3)
    names = rng.sample(FEMALE + MALE, n)
    objects = rng.sample(OBJECTS, n)
    target = rng.randrange(n)
    answer = rng.choice(PLACES)  # the target's last place, in no other sentence
    others = [p for p in PLACES if p != answer]
    streams = []
    for i, (name, obj) in enumerate(zip(names, objects)):
        path = rng.sample(others, rng.randint(2, 4))
        if i == target:
            path[-1] = answer
        sents = [f"{name} put the {obj} in the {path[0]}."]
        sents += [f"{name} moved the {obj} to the {p}." for p in path[1:]]
        roles = ["distractor"] * len(sents)
        if i == target:
            roles[-1] = "answer"
        streams.append(list(zip(sents, roles)))
    return _merge(rng, streams), f"Where is the {objects[target]} now?", answer


def _disambiguation(rng: random.Random):
    if rng.random() < 0.5:  # same first name, different surnames
        first = rng.choice(FEMALE + MALE)
        full = [f"{first} {s}" for s in rng.sample(SURNAMES, 2)]
    else:  # same surname, different first names
        last = rng.choice(SURNAMES)
        full = [f"{f} {last}" for f in rng.sample(FEMALE + MALE, 2)]
    codes = _numbers(rng, 2)
    target = rng.randrange(2)
    facts = [(f"{p}'s locker code is {c}.", "answer" if i == target else "distractor")
             for i, (p, c) in enumerate(zip(full, codes))]
    rng.shuffle(facts)
    return facts, f"What is {full[target]}'s locker code?", codes[target]


def _coreference(rng: random.Random):
    female = rng.random() < 0.5
    first = rng.choice(FEMALE if female else MALE)
    others = rng.sample(MALE if female else FEMALE, rng.randint(2, 3))
    surnames = rng.sample(SURNAMES, len(others) + 1)
    codes = _numbers(rng, len(others) + 1)
    person = f"{first} {surnames[0]}"
    target = [(f"{person} arrived at the old bank early in the morning.", "answer"),
              (f"{'She' if female else 'He'} locked the safe with the code {codes[0]}.", "answer")]
    distractors = [[(f"{o} {s} locked the {thing} with the code {c}.", "distractor")]
                   for o, s, c, thing in zip(others, surnames[1:], codes[1:], rng.sample(LOCKED, len(others)))]
    return _merge(rng, [target] + distractors), f"What code did {person} use?", codes[0]


def _multi_hop(rng: random.Random):
    names = rng.sample(FEMALE + MALE, 3)
    colors = iter(rng.sample(COLORS, 6))
    numbers = _numbers(rng, 3)
    facts = []
    for i, (name, number) in enumerate(zip(names, numbers)):
        box = next(colors)
        chain = [f"{name}'s box is {box}."]
        holder = f"{box} box"
        if rng.random() < 0.5:  # a third hop through a jar inside the box
            jar = next(colors)
            chain.append(f"The {box} box contains the {jar} jar.")
            holder = f"{jar} jar"
        chain.append(f"The {holder} holds the number {number}.")
        facts += [(s, "answer" if i == 0 else "distractor") for s in chain]
    rng.shuffle(facts)  # the hops are true in any order
    return facts, f"Which number is in {names[0]}'s box?", numbers[0]


BUILDERS = {"needle": _needle, "entity_tracking": _entity_tracking, "disambiguation": _disambiguation,
            "coreference": _coreference, "multi_hop": _multi_hop}


def split_sentences(text: str) -> list[str]:
    """Sentences of free text: runs ending in . ! or ? (or the end), whitespace collapsed."""
    parts = re.findall(r"[^.!?]+[.!?]*", " ".join(text.split()))
    return [p.strip() for p in parts if len(p.split()) >= 3]


def _filler(rng: random.Random, n_words: int, pool: list[str] | None) -> list[str]:
    """Filler sentences totalling at least ``n_words`` words (none when n_words <= 0)."""
    out, words, bag, start = [], 0, [], rng.randrange(len(pool)) if pool else 0
    while words < n_words:
        if pool:
            s = pool[(start + len(out)) % len(pool)]
        else:  # built-in: shuffled rounds of FILLER, no sentence twice in a row
            if not bag:
                bag = rng.sample(FILLER, len(FILLER))
                if out and bag[-1] == out[-1]:
                    bag[0], bag[-1] = bag[-1], bag[0]
            s = bag.pop()
        out.append(s)
        words += len(s.split())
    return out


def _assemble(rng: random.Random, facts: list, target_words: int, pool: list[str] | None):
    """The context and the [start, end) spans of answer and distractor facts in it."""
    fill = _filler(rng, target_words - sum(len(s.split()) for s, _ in facts), pool)
    slots = set(rng.sample(range(len(fill) + len(facts)), len(facts)))  # fact positions; facts keep their order
    facts_it, fill_it, pieces = iter(facts), iter(fill), []
    for i in range(len(fill) + len(facts)):
        pieces.append(next(facts_it) if i in slots else (next(fill_it), None))
    context, spans = "", {"answer": [], "distractor": []}
    for sentence, role in pieces:
        context += (" " if context else "") + sentence
        if role in spans:
            spans[role].append([len(context) - len(sentence), len(context)])
    return context, spans


def item_seed(seed: int, task: str, index: int) -> int:
    """The sub-seed of item ``index`` of ``task``: 32 bits of SHA-256 (exact in any JSON reader)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{task}/{index}".encode()).digest()[:4], "big")


def generate(seed: int, n_per_task: int, target_words: int, tasks=TASKS, filler_text: str | None = None) -> list[dict]:
    """``n_per_task`` items of each task in ``tasks`` (in that order), deterministic for ``seed``."""
    unknown = [t for t in tasks if t not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {TASKS}")
    pool = None
    if filler_text is not None:
        pool = split_sentences(filler_text)
        if not pool:
            raise ValueError("filler_text holds no sentence of 3 words or more")
    items = []
    for task in tasks:
        for i in range(n_per_task):
            sub = item_seed(seed, task, i)
            rng = random.Random(sub)
            facts, question, answer = BUILDERS[task](rng)
            context, spans = _assemble(rng, facts, target_words, pool)
            items.append({"id": f"{task}-{seed}-{i}", "task": task, "seed": sub, "context": context,
                          "question": question, "answer": answer, "answer_spans": spans["answer"],
                          "distractor_spans": spans["distractor"]})
    return items


def prompt_text(item: dict) -> str:
    return f"{INSTRUCTION}\n\n{item['context']}\n\nQuestion: {item['question']}"


def score(generated: str, answer: str) -> bool:
    """True when ``answer`` is a whole word of the first non-blank line of ``generated`` (NFKC, lower case)."""
    ans, gen = (unicodedata.normalize("NFKC", x).lower() for x in (answer.strip(), generated))
    if not ans:
        raise ValueError("answer is empty")
    first = next((line for line in gen.splitlines() if line.strip()), "")
    return re.search(rf"(?<!\w){re.escape(ans)}(?!\w)", first) is not None


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """One JSON object per line; a reader never sees a half-written file (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the synthetic routing suite as JSONL (one item a line).")
    ap.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    ap.add_argument("--n-per-task", type=int, default=10, help="items per task family (default 10)")
    ap.add_argument("--target-words", type=int, default=1000, help="approximate context length in words (default 1000)")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="task families (default all)")
    ap.add_argument("--filler-file", type=Path, help="a text file to cut filler sentences from (default built-in)")
    ap.add_argument("--out", type=Path, help="output .jsonl (written atomically); stdout when omitted")
    args = ap.parse_args(argv)
    if args.n_per_task < 1 or args.target_words < 1:
        ap.error("--n-per-task and --target-words must be >= 1")
    filler = args.filler_file.read_text(encoding="utf-8") if args.filler_file else None
    items = generate(args.seed, args.n_per_task, args.target_words, tuple(args.tasks), filler)
    if args.out:
        write_jsonl_atomic(args.out, items)
        print(f"wrote {len(items)} items to {args.out}", file=sys.stderr)
    else:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
