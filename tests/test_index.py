"""The index on disk: real faiss + BM25, built atomically."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from appliance import runtime
from appliance.bm25 import BM25, TOKENS_VERSION, tokenize
from appliance.config import Config
from appliance.errors import IndexMissingError
from appliance.index import PASSAGES_VERSION, build_index, load_index
from appliance.retriever import reciprocal_rank_fusion


def make_kb(root, text="# Pump\n\n## Priming\n\nPrime the pump with two litres of water before the first start.\n"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "pump.md").write_text(text)
    return root


def test_build_writes_passages_faiss_bm25_and_manifest(tmp_path, encoder):
    kb = make_kb(tmp_path / "kb")
    summary = runtime.build_index(Config(), kb, tmp_path / "index", encoder)  # what `appliance index` runs
    assert summary.documents == 1 and summary.passages == 1 and not summary.skipped
    loaded = load_index(tmp_path / "index")
    assert loaded.dense.ntotal == 1 and loaded.passages[0].section == ("Priming",)
    assert loaded.manifest["encoder_sha256"] == encoder.sha256
    assert encoder.sha256 not in ("", None)
    assert {"documents", "passages", "built", "skipped"} <= set(loaded.manifest)
    assert sorted(os.listdir(loaded.path)) == ["asr", "bm25.json", "dense.faiss", "manifest.json", "passages.jsonl",
                                               "sentences.faiss", "sentences.npy"]  # the shipped retriever's
    assert sorted(os.listdir(loaded.path / "asr")) == ["kb.dict", "kb.lm", "kb.vocab.json", "kb.words.json"]
    assert loaded.manifest["asr_adaptation"]["words"] > 5
    assert loaded.speech_adaptation == loaded.path / "asr"
    build_index(kb, tmp_path / "bare", encoder)  # storage alone: no speech step, none found
    assert load_index(tmp_path / "bare").speech_adaptation is None


def test_failed_build_leaves_previous_index_intact(tmp_path, encoder):
    kb = make_kb(tmp_path / "kb")
    build_index(kb, tmp_path / "index", encoder)
    before = load_index(tmp_path / "index")
    (kb / "pump.md").write_bytes(b"\x00\x00binary now")
    with pytest.raises(IndexMissingError, match="no readable documents"):
        build_index(kb, tmp_path / "index", encoder)
    after = load_index(tmp_path / "index")
    assert after.path == before.path and after.passages == before.passages


def test_rebuild_swaps_versions_and_cleans_leftovers(tmp_path, encoder):
    kb = make_kb(tmp_path / "kb")
    index_dir = tmp_path / "index"
    build_index(kb, index_dir, encoder)
    (index_dir / ".tmp-killed-build").mkdir()  # what a SIGKILLed build leaves behind
    make_kb(kb, "# Pump\n\n## Seals\n\nReplace the shaft seal every 4,000 hours.\n")
    build_index(kb, index_dir, encoder)
    loaded = load_index(index_dir)
    assert loaded.passages[0].section == ("Seals",)
    assert sorted(p.name for p in index_dir.iterdir() if not p.name.startswith("v-")) == ["current"]
    assert len([p for p in index_dir.iterdir() if p.name.startswith("v-")]) == 2  # current + previous


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexMissingError, match="appliance index"):
        load_index(tmp_path / "nowhere")


def test_missing_kb_is_a_clear_error(tmp_path, encoder):
    with pytest.raises(IndexMissingError, match="not found"):
        build_index(tmp_path / "no-kb", tmp_path / "index", encoder)


def test_bm25_ranks_exact_terms_and_round_trips(tmp_path):
    texts = ["Fault E02 means belt slip.", "Fault E05 means drive overtemperature.", "Grease the bearings."]
    bm25 = BM25.build(texts)
    assert bm25.search("what does E05 mean", 3)[0] == 1
    assert bm25.search("zebra", 3) == []
    bm25.save(tmp_path / "bm25.json")
    again = BM25.load(tmp_path / "bm25.json")
    assert again.search("belt slip", 1) == [0]
    assert json.loads((tmp_path / "bm25.json").read_text())["k1"] == 1.2
    assert "the" not in tokenize("The belt")


def test_bm25_reads_spoken_contractions_as_the_words_a_manual_spells_out():
    texts = ["The oven display shows the time.", "Do not take two doses at once.", "What's new in this release?"]
    bm25 = BM25.build(texts)
    assert bm25.search("why is the oven's display blank?", 3) == [0]  # "oven's" meets "oven"
    assert bm25.search("what\u2019s on the oven\u2019s display", 3) == [0]  # typographic apostrophes alike
    assert bm25.search("I don't want two doses", 3)[0] == 1  # "don't" meets "do not"
    assert bm25.search("what's the timer for?", 3) == []  # "what's" is "what": no longer a rare term
    assert tokenize("can't won't isn't") == ["not", "not", "not"]  # no "ca" or "wo" left over
    assert tokenize("o'clock e.g. 1.5 mm") == ["o'clock", "e.g", "1.5", "mm"]


def test_reciprocal_rank_fusion_rewards_agreement():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    order = [doc for doc, _ in fused]
    assert order[0] == 1 and set(order) == {1, 2, 3, 4}
    assert order.index(3) < order.index(2)


def test_weighted_fusion_can_favour_one_ranker():
    even = [doc for doc, _ in reciprocal_rank_fusion([[1, 2], [2, 1]], k=60)]
    favour_first = [doc for doc, _ in reciprocal_rank_fusion([[1, 2], [2, 1]], k=60, weights=[2.0, 1.0])]
    assert even == [1, 2] and favour_first[0] == 1
    favour_second = [doc for doc, _ in reciprocal_rank_fusion([[1, 2], [2, 1]], k=60, weights=[1.0, 2.0])]
    assert favour_second[0] == 2


def test_index_from_another_retriever_model_is_rebuilt_or_refused(tmp_path, config, encoder):
    """Vectors from another encoder (e.g. an index kept across a model update) must never be
    searched with this encoder's question vectors."""
    kb = make_kb(tmp_path / "kb")
    build_index(kb, tmp_path / "index", encoder)
    manifest_path = load_index(tmp_path / "index").path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["encoder_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexMissingError, match="different retriever model"):
        runtime.load_pipeline(config, kb=kb, index=tmp_path / "index", build_if_missing=False)
    pipeline = runtime.load_pipeline(config, kb=kb, index=tmp_path / "index", build_if_missing=True)
    assert pipeline.index.manifest["encoder_sha256"] == encoder.sha256
    assert pipeline.index.path != manifest_path.parent
    assert "two litres" in pipeline.ask("How do I prime the pump?").passage


def test_an_index_without_sentence_vectors_is_rebuilt_when_the_config_asks_for_them(tmp_path, config, encoder, caplog):
    kb = make_kb(tmp_path / "kb", "# Pump\n\n## Priming\n\nOpen the valve. Prime the pump with two litres of water.\n")
    build_index(kb, tmp_path / "index", encoder)
    assert load_index(tmp_path / "index").sentences is None  # not asked for: none built
    wants = dataclasses.replace(config, retriever=dataclasses.replace(config.retriever, sentence_vectors=True))
    as_it_is = runtime.load_pipeline(wants, kb=kb, index=tmp_path / "index", build_if_missing=False)
    assert as_it_is.index.sentences is None and "two litres" in as_it_is.ask("How do I prime the pump?").passage
    assert "appliance index" in caplog.text  # it answers, and says how to get the sentence vectors
    pipeline = runtime.load_pipeline(wants, kb=kb, index=tmp_path / "index", build_if_missing=True)
    assert pipeline.index.sentences.owner.tolist() == [0, 0] == [0] * pipeline.index.manifest["sentence_vectors"]
    assert {"sentences.faiss", "sentences.npy"} <= set(os.listdir(pipeline.index.path))
    assert "two litres" in pipeline.ask("How much water primes the pump?").passage


@pytest.mark.parametrize("key, why", [
    ("passages_version", "older release's document readers"),  # stale section names in citations
    ("bm25_tokens", "older release's word matching"),  # query terms made unlike the index's
])
def test_index_from_an_older_release_is_rebuilt_or_refused(tmp_path, config, encoder, key, why):
    """An index whose manifest lacks this release's version of what it holds (as releases before
    that version wrote it) is rebuilt, or refused when building is not allowed."""
    kb = make_kb(tmp_path / "kb")
    build_index(kb, tmp_path / "index", encoder)
    manifest_path = load_index(tmp_path / "index").path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    current = manifest.pop(key)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexMissingError, match=f"{why}.*appliance index"):
        runtime.load_pipeline(config, kb=kb, index=tmp_path / "index", build_if_missing=False)
    pipeline = runtime.load_pipeline(config, kb=kb, index=tmp_path / "index", build_if_missing=True)
    assert pipeline.index.path != manifest_path.parent
    assert pipeline.index.manifest[key] == current == {"passages_version": PASSAGES_VERSION,
                                                       "bm25_tokens": TOKENS_VERSION}[key]
    assert "two litres" in pipeline.ask("How do I prime the pump?").passage
