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


def test_a_retriever_built_without_settings_runs_the_shipped_fusion(encoder, kb_index_dir):
    from appliance.config import Config
    from appliance.index import load_index
    from appliance.retriever import Retriever

    index = load_index(kb_index_dir)
    shipped = Config().retriever
    bare = Retriever(encoder, index.dense, index.bm25)
    assert (bare.mode, bare.candidates, bare.rrf_k, bare.dense_weight) == \
        (shipped.mode, shipped.candidates, shipped.rrf_k, shipped.dense_weight)
    configured = Retriever(encoder, index.dense, index.bm25, shipped.mode, shipped.candidates, shipped.rrf_k,
                           shipped.dense_weight)
    question = "what does fault code E02 mean on the conveyor?"
    assert [h.index for h in bare.search(question, 5)] == [h.index for h in configured.search(question, 5)]
