"""Word error rate, for the ASR benchmark and the regression bound in the tests."""
from __future__ import annotations

from appliance.speech.adapt import WORD, spoken_form

SAID_AS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


def normalize_words(text: str) -> list[str]:
    """Lower case, numbers and codes spelled as spoken, common abbreviations expanded."""
    return [SAID_AS.get(w, w) for w in WORD.findall(spoken_form(text).lower().replace("-", " "))]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) pairs: total edits / total reference words."""
    edits = words = 0
    for ref, hyp in pairs:
        r, h = normalize_words(ref), normalize_words(hyp)
        edits += edit_distance(r, h)
        words += len(r)
    return edits / max(1, words)
