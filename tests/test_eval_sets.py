"""The evaluation question sets are well formed: schema, the fixed tune/test split, the promised counts,
and every answer span really sits in the section the question names. Fast: no models are loaded."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from appliance.ingest import read_document

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
KNOWLEDGE = ROOT / "knowledge"
FDA_DIR = ROOT.parent / "shared" / "data" / "kb" / "fda-spl"

KB_DOCS = {"amoxicillin-guide.md", "conveyor-manual.md", "dishwasher-manual.md", "ibuprofen-guide.md",
           "kitchen-oven-manual.md", "lathe-manual.md", "metformin-guide.md"}
MEDICATION = {"amoxicillin-guide.md", "ibuprofen-guide.md", "metformin-guide.md"}
KINDS = {"answerable", "unanswerable", "off-topic"}


def expected_split(qid: str) -> str:
    return "test" if int(hashlib.sha256(qid.encode("utf-8")).hexdigest(), 16) % 2 == 0 else "tune"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def check_schema(data: dict) -> list[dict]:
    assert set(data) >= {"about", "split_rule", "questions"}
    assert "sha256" in data["split_rule"] and "% 2 == 0" in data["split_rule"]
    questions = data["questions"]
    ids = [q["id"] for q in questions]
    assert len(ids) == len(set(ids)), "duplicate ids"
    texts = Counter(q["question"].strip().lower() for q in questions)
    assert texts.most_common(1)[0][1] == 1, f"duplicate question: {texts.most_common(1)}"
    for q in questions:
        assert q["kind"] in KINDS, q
        assert q["split"] == expected_split(q["id"]), q["id"]
        assert isinstance(q["question"], str) and q["question"].strip(), q["id"]
        if q["kind"] == "answerable":
            assert set(q) == {"id", "question", "kind", "split", "document", "section", "answers"}, q["id"]
            assert q["answers"] and all(isinstance(a, str) and a.strip() for a in q["answers"]), q["id"]
        elif q["kind"] == "unanswerable":
            assert set(q) == {"id", "question", "kind", "split", "document"}, q["id"]
        else:
            assert set(q) == {"id", "question", "kind", "split"}, q["id"]
    return questions


def check_spans(questions: list[dict], directory: Path) -> None:
    """Each answer is an exact substring of the text of a section whose last heading is ``section``."""
    docs = {}
    problems = []
    for q in questions:
        if q["kind"] != "answerable":
            continue
        name = q["document"]
        if name not in docs:
            docs[name] = read_document(directory / name, directory, 10**8)
        texts = [s.text for s in docs[name].sections if s.path and s.path[-1] == q["section"]]
        if not texts:
            problems.append(f"{q['id']}: no section {q['section']!r} in {name}")
            continue
        problems += [f"{q['id']}: {a!r} not in {name} > {q['section']}" for a in q["answers"]
                     if not any(a in t for t in texts)]
    assert not problems, "\n".join(problems)


# --- knowledge base ----------------------------------------------------------------------

def test_kb_eval_schema_split_and_counts():
    questions = check_schema(load("kb_eval.json"))
    kinds = Counter(q["kind"] for q in questions)
    assert len(questions) >= 200
    assert kinds["unanswerable"] >= 60
    assert kinds["off-topic"] >= 40
    assert sum(q["kind"] == "unanswerable" and q["document"] in MEDICATION for q in questions) >= 25
    for q in questions:
        if "document" in q:
            assert q["document"] in KB_DOCS, q["id"]
            assert q["id"].rsplit("-", 1)[0] != "off", q["id"]
    assert {q["document"] for q in questions if q["kind"] == "answerable"} == KB_DOCS
    assert {q["document"] for q in questions if q["kind"] == "unanswerable"} == KB_DOCS
    assert {q["split"] for q in questions} == {"tune", "test"}


def test_kb_eval_includes_every_existing_question():
    existing = [q for f in sorted(DATA.glob("kb_questions_*.json")) for q in json.loads(f.read_text(encoding="utf-8"))]
    assert len(existing) >= 55
    by_text = {q["question"]: q for q in load("kb_eval.json")["questions"]}
    for old in existing:
        new = by_text.get(old["question"])
        assert new is not None, old["question"]
        assert new["kind"] == "answerable"
        assert (new["document"], new["section"]) == (old["document"], old["section"])
        assert old["answer"] in new["answers"]


def test_kb_eval_answer_spans_are_in_their_sections():
    questions = load("kb_eval.json")["questions"]
    check_spans(questions, KNOWLEDGE)
    for q in questions:  # also verbatim in the source file, not only in the parsed text
        if q["kind"] == "answerable":
            raw = (KNOWLEDGE / q["document"]).read_text(encoding="utf-8")
            assert all(a in raw for a in q["answers"]), q["id"]


# --- FDA drug labels ---------------------------------------------------------------------

def test_fda_eval_schema_split_and_counts():
    questions = check_schema(load("fda_eval.json"))
    kinds = Counter(q["kind"] for q in questions)
    assert len(questions) >= 40
    assert kinds["answerable"] >= 30
    assert kinds["unanswerable"] + kinds["off-topic"] >= 10
    assert all(q["document"].endswith(".xml") for q in questions if "document" in q)


def test_fda_eval_answer_spans_are_in_their_sections():
    if not FDA_DIR.is_dir():
        pytest.skip(f"FDA labels not present ({FDA_DIR.relative_to(ROOT.parent)})")
    questions = load("fda_eval.json")["questions"]
    names = {p.name for p in FDA_DIR.glob("*.xml")}
    assert {q["document"] for q in questions if "document" in q} <= names
    check_spans(questions, FDA_DIR)
