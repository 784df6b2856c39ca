"""How fast would a student of a given shape read? Chosen before hours of distillation are spent.

    python -m benchmarks.student_shapes [--shapes L4=0,2,4,5 L3=0,2,5 L3-ffn.5=0,2,5:0.5 ...]
        [--questions 30] [--repeats 2] [--pause PID]

Each shape (teacher layers kept, optionally the share of FFN neurons kept) is cut from the shipped
reader's weights, exported to ONNX and quantised to int8 as the shipped reader is (speed does
not depend on what the weights learnt, so no training is needed to time it). Timed, interleaved,
at the reader's thread count: the reader batches `ask` really builds for KB questions (recorded
from the shipped pipeline), and one 256-token window; against the shipped int8 reader and the
same teacher in PyTorch fp32, in the same run. Needs the build extra (torch, transformers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from appliance import runtime
from appliance.config import PROJECT_ROOT, Config
from appliance.model_dir import ort_session
from benchmarks.ort_spinning import paused
from build_tools.selective import load_questions

DEFAULT_SHAPES = ["L4=0,2,4,5", "L3=0,2,5", "L2=0,5", "L4-ffn.5=0,2,4,5:0.5", "L3-ffn.5=0,2,5:0.5",
                  "L2-ffn.5=0,5:0.5"]


def recorded_batches(pipeline, questions: list[str]) -> list[dict]:
    """The reader's model inputs for each question, exactly as `ask` builds them."""
    feeds = []
    run = pipeline.reader._run

    def record(windows):
        width = max(len(w) for w in windows)
        ids = np.zeros((len(windows), width), np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, w in enumerate(windows):
            ids[row, : len(w)], types[row, : len(w)], mask[row, : len(w)] = w.input_ids, w.token_type_ids, 1
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return run(windows)

    pipeline.reader._run = record
    try:
        for q in questions:
            pipeline.ask(q)
    finally:
        pipeline.reader._run = run
    return feeds


def cut_student(teacher, layers: list[int], ffn_keep: float):
    """The teacher's chosen layers; FFN neurons cut to ffn_keep (which ones does not matter for speed)."""
    import torch

    from build_tools.compress.distill import make_student
    from build_tools.compress.prune import prune_model

    student = make_student(teacher, layers)
    if ffn_keep < 1:
        n, width = len(layers), teacher.config.intermediate_size
        heads = teacher.config.num_attention_heads
        prune_model(student, [torch.arange(float(heads))] * n, [torch.arange(float(width))] * n, 0, ffn_keep)
    return student


def int8_model(student, name: str, out: Path) -> Path:
    from build_tools.onnx_export import export_onnx, quantize_int8

    path = out / f"{name}.int8.onnx"
    if not path.exists():
        export_onnx(student, out / f"{name}.onnx", ["start_logits", "end_logits"])
        quantize_int8(out / f"{name}.onnx", path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.student_shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="NAME=LAYERS[:FFN_KEEP]")
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "student-shapes")
    p.add_argument("--pause", type=int, default=None, metavar="PID")
    args = p.parse_args(argv)

    import torch

    from build_tools.compress.common import count_parameters
    from build_tools.onnx_import import load_onnx_weights
    from build_tools.paths import minilm_dir
    from transformers import AutoModelForQuestionAnswering

    config = Config()
    threads = config.reader.threads
    torch.set_num_threads(threads)
    pipeline = runtime.load_pipeline(config)
    questions = [q["question"] for q in load_questions(PROJECT_ROOT / "tests" / "data" / "kb_eval.json", "tune")]
    batches = recorded_batches(pipeline, questions[: args.questions])
    shipped = config.resolve(config.paths.reader_model)
    teacher = AutoModelForQuestionAnswering.from_pretrained(minilm_dir(), attn_implementation="sdpa").eval()
    load_onnx_weights(teacher, next(shipped.glob("*.onnx")))
    args.out.mkdir(parents=True, exist_ok=True)
    sessions = {"shipped int8 (6 layers)": pipeline.reader.session}
    params = {"shipped int8 (6 layers)": count_parameters(teacher)}
    for shape in args.shapes:
        name, _, spec = shape.partition("=")
        layers, _, ffn = spec.partition(":")
        student = cut_student(teacher, [int(i) for i in layers.split(",")], float(ffn or 1))
        sessions[name] = ort_session(int8_model(student, name, args.out), threads)
        params[name] = count_parameters(student)
    window = {"input_ids": np.full((1, 256), 2000, np.int64), "attention_mask": np.ones((1, 256), np.int64),
              "token_type_ids": np.zeros((1, 256), np.int64)}

    def torch_run(feed):
        with torch.no_grad():
            teacher(**{k: torch.from_numpy(v) for k, v in feed.items()})

    runners = {"PyTorch fp32 teacher": torch_run, **{k: (lambda f, s=s: s.run(None, f)) for k, s in sessions.items()}}
    ask_ms: dict[str, list[float]] = {k: [] for k in runners}
    window_ms: dict[str, list[float]] = {k: [] for k in runners}
    with paused(args.pause):
        for run in runners.values():  # warm-up
            run(batches[0])
            run(window)
        for _ in range(args.repeats):
            for feed in batches + [window] * 10:
                timings = window_ms if feed is window else ask_ms
                for name, run in runners.items():
                    t = time.perf_counter()
                    run(feed)
                    timings[name].append((time.perf_counter() - t) * 1000)
    base_ask, base_window = statistics.median(ask_ms["PyTorch fp32 teacher"]), statistics.median(
        window_ms["PyTorch fp32 teacher"])
    rows = []
    for name in runners:
        a, w = statistics.median(ask_ms[name]), statistics.median(window_ms[name])
        rows.append({"model": name, "params_m": round(params.get(name, params["shipped int8 (6 layers)"]) / 1e6, 2),
                     "ask_batch_ms_p50": round(a, 1), "ask_batch_speedup": round(base_ask / a, 2),
                     "window256_ms_p50": round(w, 1), "window256_speedup": round(base_window / w, 2)})
    print(json.dumps({"threads": threads, "ask_batches": len(batches),
                      "mean_windows_per_ask": round(float(np.mean([b["input_ids"].shape[0] for b in batches])), 2),
                      "mean_window_tokens": round(float(np.mean([b["attention_mask"].sum(1).mean() for b in batches])), 1),
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
