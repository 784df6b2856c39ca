"""The part of a passage worth reading for a question: the sentences that best match it.

``reader.focus_tokens`` > 0 narrows each passage to a run of whole sentences around its best
match (BM25 idf of the question's words found in the sentence), grown toward the better-matching
neighbour until the token budget is spent, so the reader's windows are shorter than a whole
passage. The reader sees ``text[start:end]``; its answer offsets are shifted back by ``start``.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

from tokenizers import Tokenizer

from appliance.bm25 import tokenize
from appliance.ingest import split_sentences


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text``, line by line, in order."""
    spans, offset = [], 0
    for line in text.split("\n"):
        for sentence in split_sentences(line):
            start = text.find(sentence, offset)
            if start < 0:
                continue
            spans.append((start, start + len(sentence)))
            offset = start + len(sentence)
    return spans


def focus_span(question: str, text: str, tokenizer: Tokenizer, budget: int,
               idf: dict[str, float]) -> tuple[int, int]:
    """[start, end) of the sentences to read: the best-matching one, then neighbours while the
    passage tokens stay within ``budget`` (the whole text when it fits or has no sentences)."""
    ends = [end for _, end in tokenizer.encode(text, add_special_tokens=False).offsets]
    if len(ends) <= budget:
        return 0, len(text)
    spans = sentence_spans(text)
    if not spans:
        return 0, len(text)
    words = set(tokenize(question))
    scores = [sum(idf.get(w, 0.0) for w in words & set(tokenize(text[a:b]))) for a, b in spans]

    def tokens(first: int, last: int) -> int:  # tokens of sentences first..last
        return bisect_right(ends, spans[last][1]) - bisect_left(ends, spans[first][0] + 1)

    best = max(range(len(spans)), key=lambda i: (scores[i], -i))
    first = last = best
    while True:
        options = [i for i in (first - 1, last + 1) if 0 <= i < len(spans)]
        options = [i for i in options if tokens(min(first, i), max(last, i)) <= budget]
        if not options:
            break
        pick = max(options, key=lambda i: (scores[i], i))  # ties: the following sentence
        first, last = min(first, pick), max(last, pick)
    return spans[first][0], spans[last][1]
