"""Why the box's ONNX sessions do not spin: `ask` with onnxruntime's default (idle pool threads
spin after each run) against the shipped sessions (no spinning), in one process, interleaved
question by question in alternating order, on the same KB questions.

    python -m benchmarks.ort_spinning [--questions 40] [--pause PID]

``--pause PID`` stops that process (a training job) while timing and resumes it after. Prints JSON:
wall p50/p95 and CPU milliseconds per answer (all threads) for each, and how many answers agree.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from contextlib import contextmanager

from appliance import runtime
from appliance.config import PROJECT_ROOT, Config
from benchmarks.ask_latency import percentile
from build_tools.selective import load_questions


@contextmanager
def spinning_sessions():
    """Sessions made inside spin as onnxruntime does by default (the shipped ones do not)."""
    import onnxruntime as ort

    made = ort.InferenceSession.__init__

    def with_spin(self, path, sess_options=None, *args, **kwargs):
        if sess_options is not None:
            sess_options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        made(self, path, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = with_spin
    try:
        yield
    finally:
        ort.InferenceSession.__init__ = made


@contextmanager
def paused(pid: int | None):
    if pid:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)


def timing_args(prog: str, description: str | None, argv: list[str] | None,
                questions: int) -> tuple[argparse.Namespace, list[str]]:
    """``--questions N`` (the first N KB test questions) and ``--pause PID``, as the interleaved
    in-process benchmarks take them."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--questions", type=int, default=questions)
    p.add_argument("--pause", type=int, default=None, metavar="PID")
    args = p.parse_args(argv)
    kb_questions = load_questions(PROJECT_ROOT / "tests" / "data" / "kb_eval.json", "test")
    return args, [q["question"] for q in kb_questions][: args.questions]


def main(argv: list[str] | None = None) -> None:
    args, questions = timing_args("python -m benchmarks.ort_spinning", __doc__, argv, 40)
    pipes = {"shipped (no spinning)": runtime.load_pipeline(Config())}
    with spinning_sessions():
        pipes["onnxruntime default (spinning)"] = runtime.load_pipeline(Config())
    wall: dict[str, list[float]] = {k: [] for k in pipes}
    cpu: dict[str, list[float]] = {k: [] for k in pipes}
    agree = 0
    with paused(args.pause):
        for pipe in pipes.values():
            pipe.ask(questions[0])
        for i, q in enumerate(questions):
            order = list(pipes) if i % 2 == 0 else list(pipes)[::-1]
            texts = {}
            for name in order:
                t, c = time.perf_counter(), time.process_time()
                texts[name] = pipes[name].ask(q).text
                wall[name].append((time.perf_counter() - t) * 1000)
                cpu[name].append((time.process_time() - c) * 1000)
            agree += len(set(texts.values())) == 1
    print(json.dumps({"questions": len(questions), "same_answer": f"{agree}/{len(questions)}", **{
        name: {"wall_ms_p50": percentile(wall[name], 50), "wall_ms_p95": percentile(wall[name], 95),
               "cpu_ms_per_answer_p50": round(statistics.median(cpu[name]), 1)} for name in pipes}}, indent=2))


if __name__ == "__main__":
    main()
