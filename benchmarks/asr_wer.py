"""ASR word error rate per engine (Whisper tiny.en with and without the KB vocabulary bias,
pocketsphinx stock and KB-adapted), on espeak-ng and Piper renderings of the KB questions and on
real recorded clips.

    python -m benchmarks.asr_wer [--index index] [--speech ../shared/data/speech] [--engines ...] [--out FILE]

The KB questions (tests/data/kb_questions_*.json) are never used to build the adaptation; the LM
comes from the knowledge base text and generic question frames only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from appliance.config import PROJECT_ROOT
from appliance.index import load_index
from appliance.speech.adapt import Adaptation
from appliance.speech.asr import PocketsphinxRecognizer, transcribe
from appliance.speech.vocabulary import Vocabulary
from appliance.speech.audio import SAMPLE_RATE, joined, read_wav
from appliance.speech.tts import EspeakSynthesizer, PiperSynthesizer, default_piper_voice
from appliance.speech.wer import word_error_rate


def kb_items() -> list[dict]:
    items = []
    for path in sorted((PROJECT_ROOT / "tests" / "data").glob("kb_questions_*.json")):
        items += json.loads(path.read_text())
    return items


def kb_questions() -> list[str]:
    return [q["question"] for q in kb_items()]


def answered_right(pipeline, question: str, expected: str) -> bool:
    if not question.strip():
        return False
    answer = pipeline.ask(question)
    return not answer.abstained and expected.lower() in answer.text.lower()


def render(synth, text: str) -> np.ndarray:
    return joined(synth.synthesize(text), SAMPLE_RATE)


def real_clips(speech_dir: Path) -> list[tuple[str, np.ndarray]]:
    manifest = json.loads((speech_dir / "manifest.json").read_text())
    return [(c["transcript"], read_wav(speech_dir / c["file"]).at_rate(SAMPLE_RATE).samples)
            for c in manifest if c.get("transcript_exact")]


def real_sentence_clips(speech_dir: Path) -> list[tuple[str, np.ndarray]]:
    """The exact-transcript clips that are sentences or phrases (not the single spoken digits)."""
    manifest = json.loads((speech_dir / "manifest.json").read_text())
    return [(c["transcript"], read_wav(speech_dir / c["file"]).at_rate(SAMPLE_RATE).samples)
            for c in manifest if c.get("transcript_exact") and not c["file"].startswith("fsdd_digits/")]


ENGINES = ("whisper", "whisper+prompt", "whisper+hotwords", "stock", "kb-adapted")


def make_recognizer(name: str, adaptation: Adaptation):
    if name == "stock":
        return PocketsphinxRecognizer()
    if name == "kb-adapted":
        return PocketsphinxRecognizer(adaptation)
    from appliance.speech.whisper import WhisperRecognizer

    bias = name.partition("+")[2] or "none"
    return WhisperRecognizer(None, Vocabulary.load(adaptation.vocabulary), bias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=PROJECT_ROOT / "index")
    parser.add_argument("--speech", type=Path, default=PROJECT_ROOT.parent / "shared" / "data" / "speech")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--sets", nargs="+", default=None, help="only these sets (espeak, piper, real, sentences)")
    parser.add_argument("--answers", action="store_true",
                        help="also ask the transcripts: how many KB questions are answered right, spoken vs typed")
    args = parser.parse_args(argv)
    pipeline = None
    if args.answers:
        from appliance import runtime
        from appliance.config import Config

        pipeline = runtime.load_pipeline(Config(), index=args.index)
        expected = {q["question"]: q["answer"] for q in kb_items()}
        typed = sum(answered_right(pipeline, q, a) for q, a in expected.items())
        print(f"typed KB questions answered right: {typed}/{len(expected)}")
    folder = load_index(args.index).speech_adaptation
    adaptation = Adaptation(folder) if folder is not None else None
    if adaptation is None or not adaptation.exists():
        raise SystemExit(f"no ASR adaptation in {args.index}; run `appliance index` first")
    recognizers = {name: make_recognizer(name, adaptation) for name in args.engines}
    wanted = set(args.sets or ("espeak", "piper", "real", "sentences"))
    questions = kb_questions()
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    if "espeak" in wanted:
        sets["espeak-ng KB questions"] = [(q, render(EspeakSynthesizer(), q)) for q in questions]
    voice = default_piper_voice()
    if voice and "piper" in wanted:
        piper = PiperSynthesizer(voice)
        sets["piper KB questions"] = [(q, render(piper, q)) for q in questions]
    if (args.speech / "manifest.json").is_file():
        if "real" in wanted:
            sets["real clips"] = real_clips(args.speech)
        if "sentences" in wanted:
            sets["real sentence clips"] = real_sentence_clips(args.speech)
    results = {}
    for set_name, items in sets.items():
        audio_s = sum(len(a) for _, a in items) / SAMPLE_RATE
        for rec_name, rec in recognizers.items():
            started = time.perf_counter()
            pairs = [(ref, transcribe(rec, audio).text) for ref, audio in items]
            seconds = time.perf_counter() - started
            wer = word_error_rate(pairs)
            row = {"wer": round(wer, 3), "utterances": len(items), "real_time_factor": round(seconds / audio_s, 3),
                   "examples": pairs[:3], "misheard": [(r, h) for r, h in pairs if word_error_rate([(r, h)]) > 0]}
            if pipeline is not None and "KB questions" in set_name:
                row["answered_right"] = sum(answered_right(pipeline, hyp, expected[ref]) for ref, hyp in pairs)
            results[f"{set_name} / {rec_name}"] = row
            print(f"{set_name:24s} {rec_name:16s} WER {wer:.3f}  n={len(items)}  RTF {seconds / audio_s:.2f}"
                  + (f"  answered right {row['answered_right']}" if "answered_right" in row else ""))
    if pipeline is not None:
        results["typed KB questions answered right"] = typed
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
