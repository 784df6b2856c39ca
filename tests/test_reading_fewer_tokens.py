"""Reading fewer tokens (README): windows per model run, reading only the best-matching sentences
of a passage, and stopping once the answer is decided. Each is a reader setting, range-checked."""
from __future__ import annotations

import dataclasses

import pytest

from appliance.config import ReaderConfig, load_config
from appliance.errors import ConfigError
from appliance.focus import focus_span, sentence_spans
from appliance.pipeline import QAPipeline

QUESTIONS = ["how long should I preheat the oven for bread?", "can I drink alcohol while taking metformin?",
             "who won the football world cup in 1998?"]


@pytest.mark.parametrize("text, key", [
    ("[reader]\nbatch_size = 0\n", "reader.batch_size"),
    ("[reader]\nbatch_size = 1.5\n", "reader.batch_size"),
    ("[reader]\nfocus_tokens = -1\n", "reader.focus_tokens"),
    ("[reader]\nfocus_tokens = 600\n", "reader.focus_tokens"),
    ("[reader]\nstop_probability = 1.5\n", "reader.stop_probability"),
    ("[reader]\nstop_probability = nan\n", "reader.stop_probability"),
])
def test_bad_reading_settings_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_good_reading_settings_load(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[reader]\nbatch_size = 1\nfocus_tokens = 96\nstop_probability = 1.0\n")
    reader = load_config(path).reader
    assert (reader.batch_size, reader.focus_tokens, reader.stop_probability) == (1, 96, 1.0)


class WordTokenizer:
    """Stands in for the reader's tokenizer: one token per word."""

    class Encoding:
        def __init__(self, text: str):
            import re

            self.offsets = [m.span() for m in re.finditer(r"\S+", text)]

    def encode(self, text: str, add_special_tokens: bool = False):
        return self.Encoding(text)


TEXT = ("The oven has four racks. Clean the door with warm water. Preheat the oven for 20 minutes before "
        "baking bread. Bread bakes best on the middle rack. The timer beeps three times.")


def test_focus_keeps_the_whole_passage_when_it_fits():
    assert focus_span("preheat bread", TEXT, WordTokenizer(), 1000, {}) == (0, len(TEXT))


def test_focus_reads_the_best_matching_sentence_and_its_better_neighbour():
    idf = {"preheat": 2.0, "bread": 1.0, "rack": 0.5}
    start, end = focus_span("how long to preheat for bread?", TEXT, WordTokenizer(), 20, idf)
    piece = TEXT[start:end]
    assert piece.startswith("Preheat the oven for 20 minutes") and piece.endswith("middle rack.")
    assert len(piece.split()) <= 20
    assert (start, end) in {(a, b) for a, _ in sentence_spans(TEXT) for _, b in sentence_spans(TEXT)}


def test_focus_takes_the_best_sentence_even_over_the_budget():
    start, end = focus_span("preheat", TEXT, WordTokenizer(), 2, {"preheat": 1.0})
    assert TEXT[start:end] == "Preheat the oven for 20 minutes before baking bread."


def variant(pipeline: QAPipeline, **settings) -> QAPipeline:
    decision = dataclasses.replace(pipeline.decision, **settings)
    return QAPipeline(pipeline.index, pipeline.retriever, pipeline.reader, pipeline.calibrator, pipeline.limits,
                      decision)


def test_reading_settings_default_to_reading_everything():
    assert (ReaderConfig().batch_size, ReaderConfig().focus_tokens, ReaderConfig().stop_probability) == (16, 0, 0.0)


def test_early_stop_gives_the_same_answers_reading_fewer_passages(pipeline):
    stopping = variant(pipeline, stop_probability=1.0)
    for question in QUESTIONS:
        full, early = pipeline.ask(question), stopping.ask(question)
        assert (early.text, early.abstained, early.source) == (full.text, full.abstained, full.source)
    reading = stopping.read(QUESTIONS[0])
    assert reading.predictions[0] is not None and reading.predictions[-1] is None  # decided by the first passage
    assert len(reading.passages) == len(pipeline.read(QUESTIONS[0]).passages)


def test_focused_windows_answer_with_offsets_in_the_whole_passage(pipeline):
    focused = variant(pipeline, focus_tokens=96)
    answer = focused.ask(QUESTIONS[0])
    assert "20 minutes" in answer.text and answer.passage[answer.start : answer.end] == answer.text
    reading = focused.read(QUESTIONS[1])
    for passage, pred in zip(reading.passages, reading.predictions):
        assert pred is None or passage.text[pred.start : pred.end] == pred.text


def test_one_window_per_run_reads_the_same_spans(pipeline):
    passages = pipeline.read(QUESTIONS[0]).passages
    pairs = [(QUESTIONS[0], p.text) for p in passages]
    batched, single = pipeline.reader.predict(pairs), pipeline.reader.predict(pairs, batch_size=1)
    assert [p.text if p else None for p in single][:1] == [p.text if p else None for p in batched][:1]
