"""Retrieval on the bundled knowledge base finds the section a question is about."""
from __future__ import annotations

import pytest

import dataclasses

from appliance.config import RetrieverConfig
from appliance.index import load_index
from appliance.retriever import Retriever


def section_hit(passage, q) -> bool:
    return passage.source == q["document"] and passage.section[-1:] == (q["section"],) and q["answer"] in passage.text


@pytest.mark.parametrize("mode, minimum", [("hybrid", 0.85), ("dense", 0.85), ("bm25", 0.6)])
def test_kb_questions_find_their_section_in_top5(encoder, kb_index_dir, kb_questions, mode, minimum):
    index = load_index(kb_index_dir)
    retriever = Retriever(encoder, index, RetrieverConfig(mode=mode))
    hits = [any(section_hit(index.passages[h.index], q) for h in retriever.search(q["question"], 5))
            for q in kb_questions]
    assert len(kb_questions) >= 50
    assert sum(hits) / len(hits) >= minimum, f"{mode}: {sum(hits)}/{len(hits)}"


def test_bread_question_retrieves_preheating(encoder, kb_index_dir):
    index = load_index(kb_index_dir)
    hits = Retriever(encoder, index, RetrieverConfig()).search("how long should I preheat the oven for bread?", 3)
    assert any(index.passages[h.index].section[-1] == "Preheating" for h in hits)


def test_unknown_mode_is_rejected(encoder, kb_index_dir):
    index = load_index(kb_index_dir)
    with pytest.raises(ValueError, match="hybrid, dense or bm25"):
        Retriever(encoder, index, RetrieverConfig(mode="magic"))
    with pytest.raises(ValueError, match="rrf or convex"):
        Retriever(encoder, index, RetrieverConfig(fusion="magic"))


def test_a_retriever_runs_the_fusion_and_depth_of_its_config_section(encoder, sentence_index):
    """The shipped RRF constant and weights are what it fuses with (the passage vectors', the
    sentences' and BM25's rankings), and top_k is the section's unless asked."""
    from appliance.retriever import reciprocal_rank_fusion

    index = load_index(sentence_index)
    shipped = RetrieverConfig()
    retriever = Retriever(encoder, index, shipped)
    question = "what does fault code E02 mean on the conveyor?"
    assert len(retriever.search(question)) == shipped.top_k
    assert len(Retriever(encoder, index, dataclasses.replace(shipped, top_k=2)).search(question)) == 2
    passages, sentences = retriever.separate_rankings(encoder.encode([question]), shipped.candidates)
    lexical = index.bm25.search(question, shipped.candidates)
    fused = reciprocal_rank_fusion([passages, sentences, lexical], shipped.rrf_k,
                                   [shipped.dense_weight, shipped.sentence_list_weight, 1.0])
    assert [h.index for h in retriever.search(question, 5)] == [d for d, _ in fused[:5]]
    folded = dataclasses.replace(shipped, sentence_list_weight=0.0)  # sentences folded into the dense ranking
    dense = Retriever(encoder, index, folded).dense_rankings([question], shipped.candidates)[0]
    fused = reciprocal_rank_fusion([dense, lexical], shipped.rrf_k, [shipped.dense_weight, 1.0])
    assert [h.index for h in Retriever(encoder, index, folded).search(question, 5)] == [d for d, _ in fused[:5]]


@pytest.fixture(scope="module")
def sentence_index(tmp_path_factory, encoder):
    """The bundled knowledge base indexed with each passage's sentence vectors."""
    from appliance.index import build_index
    from conftest import ROOT

    where = tmp_path_factory.mktemp("sentence-index")
    build_index(ROOT / "knowledge", where, encoder, sentences=True)
    return where


def brute_force(index, vector):
    """Every passage's own cosine, its best sentence's cosine (-inf without sentence vectors) and
    its number of sentence vectors: what the retriever's searches approximate."""
    import numpy as np

    units = index.sentences
    passages = np.stack([index.dense.reconstruct(i) for i in range(index.dense.ntotal)])
    sentences = np.stack([units.dense.reconstruct(i) for i in range(units.dense.ntotal)])
    own = passages @ vector
    best = np.full(len(passages), -np.inf, dtype=np.float32)
    np.maximum.at(best, units.owner, sentences @ vector)
    return own, best, np.bincount(units.owner, minlength=len(passages))


def folded(own, best, counts, weight, penalty):
    """own + weight · max(0, best sentence − penalty · ln(sentences) − own)."""
    import numpy as np

    lead = np.where(np.isfinite(best), best - penalty * np.log(np.maximum(counts, 1)) - own, 0.0)
    return own + weight * np.maximum(0.0, lead)


def test_a_passage_scores_the_best_of_its_own_vector_and_its_sentences(encoder, sentence_index, kb_questions):
    """The dense ranking equals a brute-force max over every passage vector and sentence vector."""
    import numpy as np

    index = load_index(sentence_index)
    units = index.sentences
    assert units is not None and units.dense.ntotal > index.dense.ntotal  # long passages have several
    passages = np.stack([index.dense.reconstruct(i) for i in range(index.dense.ntotal)])
    sentences = np.stack([units.dense.reconstruct(i) for i in range(units.dense.ntotal)])
    with_sentences = Retriever(encoder, index, RetrieverConfig(mode="dense", sentence_vectors=True, sentence_weight=1.0,
                                                               sentence_count_penalty=0.0))
    without = Retriever(encoder, index, RetrieverConfig(mode="dense", sentence_vectors=False))
    ignoring = Retriever(encoder, index, RetrieverConfig(mode="dense", sentence_vectors=True, sentence_weight=0.0))
    moved = 0
    for q in kb_questions[:20]:
        vector = encoder.encode([q["question"]])[0]
        best = passages @ vector
        np.maximum.at(best, units.owner, sentences @ vector)
        ranking = with_sentences.dense_rankings([q["question"]], 10)[0]
        np.testing.assert_allclose(best[ranking], np.sort(best)[::-1][:10], atol=1e-5)
        moved += ranking != without.dense_rankings([q["question"]], 10)[0]
        assert ignoring.dense_rankings([q["question"]], 10)[0] == without.dense_rankings([q["question"]], 10)[0]
    assert moved > 0  # the sentences change rankings; without them the passage vectors alone rank


def test_a_sentence_of_a_long_passage_counts_less_by_the_count_penalty(encoder, sentence_index, kb_questions):
    """With a weight and a count penalty the ranking is the brute-force order of
    own + w · max(0, best sentence − penalty · ln(sentences) − own), and the penalty moves rankings."""
    import numpy as np

    index = load_index(sentence_index)
    penalised = Retriever(encoder, index, RetrieverConfig(mode="dense", sentence_vectors=True, sentence_weight=0.6,
                                                          sentence_count_penalty=0.05))
    unpenalised = Retriever(encoder, index, RetrieverConfig(mode="dense", sentence_vectors=True, sentence_weight=0.6,
                                                            sentence_count_penalty=0.0))
    moved = 0
    for q in kb_questions[:20]:
        score = folded(*brute_force(index, encoder.encode([q["question"]])[0]), 0.6, 0.05)
        ranking = penalised.dense_rankings([q["question"]], 10)[0]
        np.testing.assert_allclose(score[ranking], np.sort(score)[::-1][:10], atol=1e-5)
        moved += ranking != unpenalised.dense_rankings([q["question"]], 10)[0]
    assert moved > 0


def test_candidate_scores_give_both_rankers_scores_for_every_candidate(encoder, sentence_index, kb_questions):
    """Convex fusion weighs a passage only one ranker found by both scores: the dense one computed in
    full (its vector and its sentences), the BM25 one read off the index."""
    import numpy as np

    index = load_index(sentence_index)
    retriever = Retriever(encoder, index, RetrieverConfig(sentence_vectors=True, sentence_weight=0.6,
                                                          sentence_count_penalty=0.05))
    only_bm25 = 0
    for q in kb_questions[:20]:
        vector = encoder.encode([q["question"]])
        full = folded(*brute_force(index, vector[0]), 0.6, 0.05)
        dense, lexical = retriever.candidate_scores(vector, q["question"], 5)
        assert dense.keys() == lexical.keys() >= set(index.bm25.search(q["question"], 5))
        np.testing.assert_allclose([dense[p] for p in dense], full[list(dense)], atol=1e-5)
        np.testing.assert_allclose([lexical[p] for p in lexical], index.bm25.scores(q["question"])[list(lexical)])
        only_bm25 += len(dense) > 5
    assert only_bm25 > 0  # some candidates came from BM25 alone and were scored all the same


def test_the_sentences_own_ranking_puts_each_passage_at_its_best_penalised_sentence(encoder, sentence_index,
                                                                                     kb_questions):
    """The third list of rank fusion: a passage at its best sentence's cosine less the count penalty,
    a passage of one sentence at its own cosine; beside it the passage vectors alone."""
    import numpy as np

    index = load_index(sentence_index)
    retriever = Retriever(encoder, index, RetrieverConfig(sentence_vectors=True, sentence_count_penalty=0.05,
                                                          sentence_list_weight=0.75))
    for q in kb_questions[:20]:
        vector = encoder.encode([q["question"]])
        own, best, counts = brute_force(index, vector[0])
        listed = np.where(counts > 1, best - 0.05 * np.log(np.maximum(counts, 1)), own)
        for depth in (1, 10, 30):  # 30: the shipped candidates; 1: the shallowest first search
            by_passage, by_sentence = retriever.separate_rankings(vector, depth)
            np.testing.assert_allclose(own[by_passage], np.sort(own)[::-1][:depth], atol=1e-5)
            np.testing.assert_allclose(listed[by_sentence], np.sort(listed)[::-1][:depth], atol=1e-5)


def test_the_sentences_own_ranking_searches_deeper_when_a_passage_left_out_could_still_win():
    """The first sentence search returns only one catch-all passage's sentences; a passage of two
    sentences just beyond them pays a smaller penalty and must still come first."""
    import faiss
    import numpy as np

    from appliance.retriever import SearchIndex, SentenceVectors

    def unit(cosine: float) -> list[float]:  # a vector at this cosine to the question (1, 0)
        return [cosine, float(np.sqrt(1 - cosine**2))]

    def flat(rows: list[list[float]]) -> faiss.Index:
        index = faiss.IndexFlatIP(2)
        index.add(np.array(rows, dtype=np.float32))
        return index

    catch_all, two_sentences = [unit(0.9)] * 10, [unit(0.85), unit(0.1)]  # 0.9 - 0.05 ln 10 < 0.85 - 0.05 ln 2
    sentences = SentenceVectors(flat(catch_all + two_sentences), np.array([0] * 10 + [1, 1], dtype=np.int64))
    index = SearchIndex(flat([unit(0.5), unit(0.4), unit(0.3)]), None, sentences)  # passage 2: one sentence
    retriever = Retriever(None, index, RetrieverConfig(sentence_vectors=True, sentence_count_penalty=0.05))
    question = np.array([[1.0, 0.0]], dtype=np.float32)
    assert retriever.separate_rankings(question, 1) == ([0], [1])
    assert retriever.separate_rankings(question, 3) == ([0, 1, 2], [1, 0, 2])
