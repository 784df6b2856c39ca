"""Same-paragraph unanswerable questions, made from answerable ones, for teaching the reader to abstain.

SQuAD 2.0's unanswerable questions are written against the very paragraph they cannot be answered
from, mostly by changing one thing in an answerable question: a name or number swapped for one the
paragraph does not mention (entity swap, about a fifth of them) or a word swapped for its opposite
(antonym, another fifth; Rajpurkar et al. 2018, table 3). Only 348 such questions exist in the
training data offline, while the box meets the same thing every day: an on-topic question about a
drug, a setting or a part the document never names. These rules make many more of them from SQuAD
v1.1's questions, labelled no-answer over their own paragraph. Every rule checks that what it puts
in is absent from the paragraph, so the made question really has no answer there.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from build_tools.squad import SquadExample

# Opposites whose swap turns a question about the paragraph into one it does not answer, as long
# as the opposite does not appear in the paragraph.
ANTONYMS = {
    "first": "last", "largest": "smallest", "biggest": "smallest", "highest": "lowest", "most": "least",
    "earliest": "latest", "oldest": "newest", "longest": "shortest", "before": "after", "increase": "decrease",
    "increased": "decreased", "north": "south", "east": "west", "maximum": "minimum", "more": "fewer",
    "best": "worst", "won": "lost", "win": "lose", "major": "minor", "larger": "smaller", "higher": "lower",
    "older": "younger", "early": "late", "start": "end", "began": "ended", "open": "close", "opened": "closed",
    "allowed": "forbidden", "inside": "outside", "upper": "lower", "top": "bottom", "positive": "negative",
    "rise": "fall", "gain": "loss", "success": "failure", "public": "private", "internal": "external",
}
ANTONYMS.update({v: k for k, v in list(ANTONYMS.items()) if v not in ANTONYMS})

# A name: capitalised words, possibly joined by a lower-case particle ("Bank of England").
_NAME = re.compile(r"\b[A-Z][\w'’.-]*[\w](?:\s+(?:of|the|de|du|von|van|der|and)\s+[A-Z][\w'’.-]*[\w]|\s+[A-Z][\w'’.-]*[\w])*")
_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?\b")
_WORD = re.compile(r"[A-Za-z]+")
_NOT_NAMES = {"What", "Who", "Whom", "Whose", "When", "Where", "Which", "Why", "How", "In", "On", "At", "The", "A",
              "An", "Is", "Are", "Was", "Were", "Do", "Does", "Did", "I", "To", "For", "From", "By", "Of", "With",
              "According", "After", "Before", "During", "Along", "Besides", "If", "Other", "As", "Can", "Could"}


def _follows_sentence_end(text: str, at: int) -> bool:
    """text[at] comes after a sentence's end mark and nothing but white space (read backwards from
    ``at``: a regex over the whole prefix made name-finding quadratic in the paragraph's length)."""
    i = at - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i >= 0 and text[i] in '.!?"“'


def names_in(text: str) -> list[str]:
    """Capitalised names in a text. A sentence's first word is capitalised anyway, so a name that
    starts a sentence is taken only from its second word on (\"Scholars\" is not a name)."""
    found = []
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        at_sentence_start = m.start() == 0 or _follows_sentence_end(text, m.start())
        if at_sentence_start:
            words = words[1:]
        while words and words[0] in _NOT_NAMES:
            words = words[1:]
        if words:
            found.append(" ".join(words))
    return found


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"  # what a regex's \w matches


def _absent(phrase: str, lowered: str) -> bool:
    """``phrase`` is not a word or words of ``lowered`` (a text lower-cased once by the caller).
    Plain string search with the word-boundary test done by hand: a regex per phrase meant
    hundreds of thousands of compilations (most of the time it took to make the questions)."""
    phrase = phrase.lower()
    at = lowered.find(phrase)
    while at >= 0:
        end = at + len(phrase)
        if (at == 0 or not _is_word_char(lowered[at - 1])) and (end == len(lowered) or not _is_word_char(lowered[end])):
            return False
        at = lowered.find(phrase, at + 1)
    return True


def swap_name(question: str, context: str, candidates: list[str], rng: random.Random) -> str | None:
    """A name the question shares with the paragraph, replaced by a name of the same article the
    paragraph does not mention (same topic, so only the name gives it away)."""
    context, lowered_question = context.lower(), question.lower()
    shared = [n for n in names_in(question) if not _absent(n, context)]
    if not shared:
        return None
    tried = rng.sample(candidates, min(60, len(candidates)))  # a sample: articles name hundreds
    pool = [c for c in tried if _absent(c, context) and _absent(c, lowered_question)]
    if not pool:
        return None
    old = rng.choice(shared)
    same_length = [c for c in pool if len(c.split()) == len(old.split())]
    return question.replace(old, rng.choice(same_length or pool), 1)


def swap_number(question: str, context: str, rng: random.Random) -> str | None:
    """A number or year the question shares with the paragraph, moved to one it does not mention."""
    context = context.lower()
    shared = [m for m in _NUMBER.finditer(question) if not _absent(m.group(0), context)]
    if not shared:
        return None
    m = rng.choice(shared)
    text = m.group(0)
    value = int(text.replace(",", "").split(".")[0])
    is_year = 1000 <= value <= 2100 and len(text) == 4
    for _ in range(20):
        if is_year or value < 100:
            new = value + rng.choice([-1, 1]) * rng.randint(2, 12 if value < 100 else 40)
        else:  # a quantity: another of the same size, as round as the original
            new = round(value * rng.choice([0.25, 0.5, 1.5, 2, 3, 4]))
        shown = f"{new:,}" if "," in text else str(new)
        if new > 0 and _absent(str(new), context) and _absent(f"{new:,}", context):
            return question[: m.start()] + shown + question[m.end():]
    return None


def swap_antonym(question: str, context: str, rng: random.Random) -> str | None:
    """A word of the question replaced by its opposite, when the paragraph never uses the opposite."""
    context = context.lower()
    words = [m for m in _WORD.finditer(question) if m.group(0).lower() in ANTONYMS]
    rng.shuffle(words)
    for m in words:
        opposite = ANTONYMS[m.group(0).lower()]
        if _absent(opposite, context):
            if m.group(0)[0].isupper():
                opposite = opposite.capitalize()
            return question[: m.start()] + opposite + question[m.end():]
    return None


def synthetic_unanswerables(examples: list[SquadExample], share: float, seed: int) -> list[SquadExample]:
    """For a share of the answerable questions, one changed copy over its own paragraph, labelled
    no-answer; the rules are tried in a random order and a question none applies to is skipped."""
    rng = random.Random(seed)
    article_names: dict[str, dict[str, None]] = {}
    for title, context in dict.fromkeys((ex.title, ex.context) for ex in examples):  # each paragraph once
        names = article_names.setdefault(title, {})
        for n in names_in(context):
            names[n] = None
    listed: dict[str, list[str]] = {}

    def candidates(title: str) -> list[str]:
        return listed.setdefault(title, list(article_names[title]))

    made = []
    for ex in examples:
        if ex.is_impossible or rng.random() >= share:
            continue
        rules = ["name", "number", "antonym"]
        rng.shuffle(rules)
        for rule in rules:
            if rule == "name":
                new = swap_name(ex.question, ex.context, candidates(ex.title), rng)
            elif rule == "number":
                new = swap_number(ex.question, ex.context, rng)
            else:
                new = swap_antonym(ex.question, ex.context, rng)
            if new and new != ex.question:
                made.append(replace(ex, qid=f"{ex.qid}-{rule}-swap", question=new, answers=(), answer_starts=()))
                break
    return made
