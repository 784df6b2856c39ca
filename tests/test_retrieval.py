"""Retrieval on the bundled knowledge base finds the section a question is about."""
from __future__ import annotations

import pytest

from appliance.index import load_index
from appliance.retriever import Retriever


def section_hit(passage, q) -> bool:
    return passage.source == q["document"] and passage.section[-1:] == (q["section"],) and q["answer"] in passage.text


@pytest.mark.parametrize("mode, minimum", [("hybrid", 0.85), ("dense", 0.85), ("bm25", 0.6)])
def test_kb_questions_find_their_section_in_top5(encoder, kb_index_dir, kb_questions, mode, minimum):
    index = load_index(kb_index_dir)
    retriever = Retriever(encoder, index.dense, index.bm25, mode)
    hits = [any(section_hit(index.passages[h.index], q) for h in retriever.search(q["question"], 5))
            for q in kb_questions]
    assert len(kb_questions) >= 50
    assert sum(hits) / len(hits) >= minimum, f"{mode}: {sum(hits)}/{len(hits)}"


def test_bread_question_retrieves_preheating(encoder, kb_index_dir):
    index = load_index(kb_index_dir)
    hits = Retriever(encoder, index.dense, index.bm25).search("how long should I preheat the oven for bread?", 3)
    assert any(index.passages[h.index].section[-1] == "Preheating" for h in hits)


def test_unknown_mode_is_rejected(encoder, kb_index_dir):
    index = load_index(kb_index_dir)
    with pytest.raises(ValueError, match="hybrid, dense or bm25"):
        Retriever(encoder, index.dense, index.bm25, "magic")
