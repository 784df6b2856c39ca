"""What reading only the passages that can still change the answer saves: the box's `read` (in
rank order, while a passage's rank leaves it able to reach the threshold and beat the best so far,
`QAPipeline.read_passages`) against reading all five retrieved passages (`every_passage=True`, as before), in one process,
interleaved question by question in alternating order, on the same KB questions.

    python -m benchmarks.reading_depth [--questions 50] [--pause PID]

``--pause PID`` stops that process (a training job) while timing and resumes it after. Prints JSON:
wall p50/p95 of retrieval + reading, CPU milliseconds per question (all threads), passages read,
and how many questions end with the same decision (answer text, or "I don't know").
"""
from __future__ import annotations

import json
import statistics
import time

from appliance import runtime
from appliance.config import Config
from appliance.pipeline import QAPipeline
from benchmarks.ask_latency import percentile
from benchmarks.ort_spinning import paused, timing_args

WAYS = {"passages that can answer (shipped)": False, "all five passages": True}


def decision(pipe: QAPipeline, question: str, every_passage: bool) -> tuple[str, int]:
    """The answer text ("" for "I don't know") and how many passages the reader read."""
    reading = pipe.read(question, every_passage=every_passage)
    return pipe.answer(question, reading).text, sum(p is not None for p in reading.predictions)


def main(argv: list[str] | None = None) -> None:
    args, questions = timing_args("python -m benchmarks.reading_depth", __doc__, argv, 50)
    pipe = runtime.load_pipeline(Config())
    wall: dict[str, list[float]] = {k: [] for k in WAYS}
    cpu: dict[str, list[float]] = {k: [] for k in WAYS}
    read: dict[str, list[int]] = {k: [] for k in WAYS}
    same = 0
    with paused(args.pause):
        for every in WAYS.values():
            decision(pipe, questions[0], every)
        for i, q in enumerate(questions):
            texts = {}
            for name in (list(WAYS) if i % 2 == 0 else list(WAYS)[::-1]):
                t, c = time.perf_counter(), time.process_time()
                texts[name], n = decision(pipe, q, WAYS[name])
                wall[name].append((time.perf_counter() - t) * 1000)
                cpu[name].append((time.process_time() - c) * 1000)
                read[name].append(n)
            same += len(set(texts.values())) == 1
    shipped, before = list(WAYS)
    print(json.dumps({"questions": len(questions), "same_decision": f"{same}/{len(questions)}",
                      "speedup_p50": round(percentile(wall[before], 50) / percentile(wall[shipped], 50), 2), **{
        name: {"wall_ms_p50": percentile(wall[name], 50), "wall_ms_p95": percentile(wall[name], 95),
               "cpu_ms_per_question_p50": round(statistics.median(cpu[name]), 1),
               "passages_read_mean": round(statistics.mean(read[name]), 2)} for name in WAYS}}, indent=2))


if __name__ == "__main__":
    main()
