"""Property-based tests: ingestion and question normalisation hold for any input."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import BadQuestionError, IngestError
from appliance.ingest import (Document, Section, document_passages, read_document, read_html, read_markdown,
                              read_text)
from appliance.pipeline import normalize_question

words = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x24F, exclude_characters="#"), min_size=1, max_size=12)
paragraphs = st.lists(words, min_size=1, max_size=120).map(" ".join)


@given(st.lists(paragraphs, min_size=1, max_size=6), st.integers(min_value=5, max_value=200))
def test_passages_keep_every_word_and_respect_the_limit(paras, max_words):
    text = "\n\n".join(paras)
    doc = Document("T", "t.md", [Section(("S",), text)])
    passages = document_passages(doc, max_words)
    assert all(len(p.text.split()) <= max_words for p in passages)
    assert " ".join(p.text for p in passages).split() == text.split()


@given(st.binary(max_size=2000))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
def test_any_bytes_either_parse_or_raise_ingest_error(tmp_path, data):
    for name in ("x.md", "x.txt", "x.html", "x.xml", "x.pdf"):
        path = tmp_path / name
        path.write_bytes(data)
        try:
            doc = read_document(path, tmp_path, 10**6)
        except IngestError as exc:
            assert name in str(exc)
        else:
            assert any(s.text.strip() for s in doc.sections)


@given(st.text(max_size=3000))
def test_markdown_and_html_readers_never_crash_on_text(text):
    """Any text: a document (titled, no empty sections, all text encodable) or an IngestError naming the file."""
    for reader in (read_markdown, read_html):
        try:
            doc = reader(text.encode("utf-8"), Path("odd-notes.txt"))
        except IngestError as exc:
            assert "odd-notes.txt" in str(exc)
            continue
        assert doc.title.strip()  # the file name when the text has none
        assert all(section.text.strip() for section in doc.sections)
        for section in doc.sections:
            section.text.encode("utf-8")
            assert all(isinstance(h, str) for h in section.path)


plain_words = st.text(alphabet=st.characters(categories=("Lu", "Ll", "Nd")) | st.sampled_from(",;:?'"),
                      min_size=1, max_size=12)


@given(st.lists(st.lists(plain_words, min_size=1, max_size=30).map(" ".join), min_size=1, max_size=5))
def test_readers_keep_every_word_of_plain_text(paras):
    """Text without markup comes out of every text reader word for word, in order."""
    text = "\n\n".join(paras)
    for reader in (read_markdown, read_html, read_text):
        doc = reader(text.encode("utf-8"), Path("notes"))
        assert doc.title == "Notes"
        assert " ".join(section.text for section in doc.sections).split() == text.split()


@given(st.text(max_size=800))
def test_question_normalisation_is_total_and_idempotent(raw):
    try:
        question = normalize_question(raw, 500)
    except BadQuestionError as exc:
        assert "empty" in str(exc) or "limit" in str(exc)
        return
    assert question == question.strip() and "  " not in question and 0 < len(question) <= 500
    assert all(ch.isprintable() for ch in question)
    assert normalize_question(question, 500) == question
