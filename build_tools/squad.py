"""Reading SQuAD-format files (v1.1 and v2.0, plain or gzipped) into flat examples."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from appliance.bm25 import BM25, first_terms
from appliance.windows import Window
from build_tools.errors import DataError


@dataclass(frozen=True)
class SquadExample:
    qid: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold texts; empty when unanswerable
    answer_starts: tuple[int, ...]
    paragraph_id: int  # index of the paragraph within the file
    title: str

    @property
    def is_impossible(self) -> bool:
        return not self.answers


def load_squad(path: str | Path) -> list[SquadExample]:
    """Flatten a SQuAD-format JSON file; raises ValueError naming the file if it is not one."""
    articles = _articles(path)
    examples: list[SquadExample] = []
    paragraph_id = 0
    for article in articles:
        for para in article.get("paragraphs", []):
            context = para["context"]
            for qa in para.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                examples.append(
                    SquadExample(
                        qid=str(qa.get("id", f"q{len(examples)}")),
                        question=qa["question"],
                        context=context,
                        answers=tuple(a["text"] for a in answers),
                        answer_starts=tuple(int(a.get("answer_start", -1)) for a in answers),
                        paragraph_id=paragraph_id,
                        title=article.get("title", ""),
                    )
                )
            paragraph_id += 1
    return examples


def load_paragraphs(path: str | Path) -> list[tuple[str, str]]:
    """(title, context) of every paragraph of the file, in file order, with or without questions."""
    return [(article.get("title", ""), para["context"]) for article in _articles(path)
            for para in article.get("paragraphs", [])]


def _articles(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        articles = data["data"]
        if not isinstance(articles, list):
            raise TypeError("'data' is not a list of articles")
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable SQuAD-format JSON file ({exc})") from exc
    return articles


def label_window(window: Window, ex: SquadExample) -> tuple[int, int]:
    """Token start/end of the first gold answer inside this window; (0, 0) = no answer here."""
    if ex.is_impossible:
        return 0, 0
    start_char = ex.answer_starts[0]
    end_char = start_char + len(ex.answers[0])
    start_tok = end_tok = None
    for i, off in enumerate(window.context_offsets):
        if off is None:
            continue
        if start_tok is None and off[0] <= start_char < off[1]:
            start_tok = i
        if off[0] < end_char <= off[1]:
            end_tok = i
    if start_tok is None or end_tok is None or end_tok < start_tok:
        return 0, 0
    return start_tok, end_tok


def mining_terms(text: str) -> list[str]:
    """BM25 terms as the box made them before it split contractions (its terms version 1), kept
    for mining training passages: a job resumed after the box's terms change must read the same
    windows in the same order (with the new terms, SQuAD train's retrieved negatives change)."""
    return first_terms(text)


class ArticleSearch:
    """The distinct paragraphs of each article, in order, searched by BM25 (one index per article,
    built on first use): where the training jobs find the passages of a question's own article
    that look like an answer but are not one."""

    def __init__(self, examples: list[SquadExample]):
        paragraphs: dict[str, dict[str, None]] = {}
        for ex in examples:
            paragraphs.setdefault(ex.title, {})[ex.context] = None
        self.paragraphs = {title: list(texts) for title, texts in paragraphs.items()}
        self._indexes: dict[str, BM25] = {}

    def without_answer(self, ex: SquadExample, count: int, depth: int) -> list[str]:
        """Up to ``count`` other paragraphs of the example's article among BM25's top ``depth`` for
        its question, best first, none of which contains a gold answer text."""
        texts = self.paragraphs[ex.title]
        if count <= 0 or len(texts) < 2:
            return []
        if ex.title not in self._indexes:
            self._indexes[ex.title] = BM25.build(texts, terms=mining_terms)
        answers = [a.lower() for a in ex.answers]
        found = [texts[i] for i in self._indexes[ex.title].search(ex.question, depth)
                 if texts[i] != ex.context and not any(a in texts[i].lower() for a in answers)]
        return found[:count]
