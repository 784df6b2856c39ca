"""The knowledge base's own words for the recognisers: product names, drug names, fault codes.

Built at index time (``kb.vocab.json`` beside the pocketsphinx LM) from the KB text. Whisper is
biased toward the terms (``initial_prompt`` or ``hotwords``), and every recogniser's transcript has
spoken codes mapped back to the KB's written form before retrieval ("e zero five" → "E05",
"F three" → "F3", "BC three hundred" → "BC-300").
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CODE = re.compile(r"\b[A-Z]{1,3}-?\d{1,5}\b")
TERM = re.compile(r"(?<![\w-])[A-Za-z]{4,}(?![\w-])")
MAX_PROMPT_CHARS = 400  # ~100 Whisper tokens: well inside its 223-token prompt window

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
NUMBER_WORDS = {**{w: i for i, w in enumerate(_UNITS)}, "oh": 0, **_TENS, "hundred": 100, "thousand": 1000}
_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_JOINER = re.compile(r"[\s.-]*")


@dataclass
class Vocabulary:
    terms: list[str] = field(default_factory=list)  # most frequent first
    codes: list[str] = field(default_factory=list)

    # -- building and storing ------------------------------------------------------------------

    @classmethod
    def build(cls, texts: Iterable[str], common_words: set[str], max_terms: int = 60) -> Vocabulary:
        """Codes (E05, BC-300) and words a general dictionary lacks (Hearthline, metformin)."""
        codes: Counter = Counter()
        forms: dict[str, Counter] = {}
        for text in texts:
            codes.update(CODE.findall(text))
            for word in TERM.findall(text):
                if word.lower() not in common_words:
                    forms.setdefault(word.lower(), Counter())[word] += 1
        counts = Counter({w: sum(c.values()) for w, c in forms.items()})
        terms = [forms[w].most_common(1)[0][0] for w, n in counts.most_common(max_terms) if n >= 2]
        return cls(terms, [c for c, _ in codes.most_common()])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"terms": self.terms, "codes": self.codes}, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path | None) -> Vocabulary:
        """The saved vocabulary; an empty one when there is none (an index from before it existed)."""
        if path is None or not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data.get("terms", [])), list(data.get("codes", [])))

    # -- Whisper bias ------------------------------------------------------------------------

    def prompt(self) -> str:
        """A previous-text prompt naming the KB's products, codes and rare words."""
        words = self.terms[:40] + self.codes[:20]
        text = ""
        for word in words:
            if len(text) + len(word) + 2 > MAX_PROMPT_CHARS:
                break
            text = f"{text}, {word}" if text else word
        return f"{text}." if text else ""

    def hotwords(self) -> str:
        return self.prompt().rstrip(".").replace(",", "")

    # -- spoken codes → written codes ----------------------------------------------------------

    def written_codes(self, text: str) -> str:
        """Replace spoken or oddly written KB codes ("e zero five", "E 05", "bc300") by the KB's form."""
        if not self.codes:
            return text
        known = {c.replace("-", "").upper(): c for c in self.codes}
        tokens = list(_TOKEN.finditer(text))
        out, pos, i = [], 0, 0
        while i < len(tokens):
            match = _code_at(tokens, i, text, known)
            if match is None:
                i += 1
                continue
            end_token, code = match
            out += [text[pos:tokens[i].start()], code]
            pos, i = tokens[end_token - 1].end(), end_token
        return "".join(out) + text[pos:]


def _joined(text: str, a: re.Match, b: re.Match) -> bool:
    """Only spaces, dots or hyphens between two tokens (a comma ends a code)."""
    return _JOINER.fullmatch(text, a.end(), b.start()) is not None


def _code_at(tokens: list[re.Match], i: int, text: str, known: dict[str, str]) -> tuple[int, str] | None:
    """The longest known code starting at token ``i``: (index after its last token, written form)."""
    best = None
    letters = ""
    for k in range(i, min(i + 3, len(tokens))):
        token = tokens[k].group()
        if not token.isalpha() or (k > i and not _joined(text, tokens[k - 1], tokens[k])):
            break
        letters += token.upper()
        if len(letters) > 3:
            break
        for j in range(k + 1, min(k + 8, len(tokens))):
            if not _joined(text, tokens[j - 1], tokens[j]):
                break
            digits = [t.group().lower() for t in tokens[k + 1:j + 1]]
            if not all(d.isdigit() or d in NUMBER_WORDS for d in digits):
                break
            for value in _digit_readings(digits):
                if letters + value in known:
                    best = (j + 1, known[letters + value])
    return best


def _digit_readings(words: list[str]) -> set[str]:
    """How a run of digits and number words may be read: digit by digit / in pairs ("fourteen forty"
    → 1440, "zero five" → 05) or as a cardinal ("three hundred" → 300)."""
    readings = set()
    pieces, pending = [], None  # "twenty one" → 21
    for word in words:
        if word.isdigit():
            value = word
        elif word in ("hundred", "thousand"):
            pieces = None
            break
        else:
            value = str(NUMBER_WORDS[word])
        if pending is not None and len(value) == 1 and value != "0" and not word.isdigit():
            pieces[-1], pending = str(int(pending) + int(value)), None
            continue
        pending = value if word in _TENS else None
        pieces.append(value)
    if pieces:
        readings.add("".join(pieces))
    total, current = 0, 0
    for word in words:
        value = int(word) if word.isdigit() else NUMBER_WORDS[word]
        if word == "hundred":
            current = max(current, 1) * 100
        elif word == "thousand":
            total, current = total + max(current, 1) * 1000, 0
        else:
            current += value
    readings.add(str(total + current))
    return readings
