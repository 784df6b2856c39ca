"""Latency of every compression variant on one 256-token window, batch 1, at 1 and 2 threads:
all variants in one process, interleaved round-robin after a warm-up, medians reported with the
ratio to the PyTorch fp32 teacher measured in the same run. Also compares onnxruntime session
options (threads 1/2/4, graph optimisation level) on the int8 models.

    python -m benchmarks.compression [--variants build_tools/compress/variants.json] [--repeats 40]
        [--out build/compress/bench.json]

Needs the ``build`` extra (torch, transformers); prints and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# torch's OpenMP workers must not spin between runs either (set before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def full_window_text(data: Path, length: int) -> tuple[str, str]:
    """The first question whose passage fills a whole window (small files: passages joined)."""
    from build_tools.squad import load_squad

    examples = load_squad(data)
    for ex in examples:
        if len(ex.context.split()) > length:
            return ex.question, ex.context
    context = ""
    while len(context.split()) <= length:
        context += " ".join(dict.fromkeys(ex.context for ex in examples)) + " "
    return examples[0].question, context


def feeds_for(tokenizer_path: Path, kind: str, question: str, context: str, length: int) -> dict[str, np.ndarray]:
    """Exactly `length` tokens of real text through this variant's own tokenizer."""
    from appliance.windows import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    tok.enable_truncation(length, strategy="only_second" if kind == "reader" else "longest_first")
    enc = tok.encode(question, context) if kind == "reader" else tok.encode(context)
    ids = np.asarray(enc.ids, dtype=np.int64)[None]
    types = np.asarray(enc.type_ids, dtype=np.int64)[None] if kind == "reader" else np.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}


def ort_runner(path: Path, feeds: dict, threads: int, level: str = "ORT_ENABLE_ALL",
               spin: bool = False, packed_weights: Path | None = None) -> Callable[[], object]:
    """One session; worker threads do not spin after a run (spinning pools would steal the CPU
    from the next variant in the round-robin and skew it)."""
    import onnxruntime as ort

    from appliance.packed import add_packed_weights

    options = ort.SessionOptions()
    keep_alive = add_packed_weights(options, packed_weights) if packed_weights else []  # noqa: F841
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    return lambda: session.run(None, feeds)


def torch_runner(checkpoint: Path, kind: str, feeds: dict, threads: int) -> Callable[[], object]:
    import torch

    from build_tools.compress.common import load_model

    model = load_model(checkpoint, kind, attn="sdpa")
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def run():
        torch.set_num_threads(threads)  # torch's pool is global: set it per call
        with torch.no_grad():
            return model(**inputs)

    return run


def interleaved(runners: dict[str, Callable], repeats: int, warmup: int, settle: int = 1) -> dict[str, list[float]]:
    """Round-robin timing so drift (other load, turbo) hits every variant alike.

    Each timed run follows ``settle`` untimed runs of the same variant: PyTorch's global thread
    pool is resized whenever the thread count changes, and the first call after that was measured
    3-6x slower (PyTorch fp32 at 2 threads: 340 ms p50 interleaved without settling, 54-80 ms alone)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            for _ in range(settle):
                run()
            t = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - t) * 1000)
    return times


def summary(times: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
            "min_ms": round(min(times), 2)}


def main(argv: list[str] | None = None) -> None:
    from build_tools.compress.variants import DEFAULT_SPEC, DEV42, load_spec

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variants", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--data", type=Path, default=DEV42, help="where the benchmark window's text comes from")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--session-options", default="reader-int8,reader-fused-int8",
                   help="variants whose ORT session options (threads 1/2/4 x optimisation level) are compared")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "compress" / "bench.json")
    args = p.parse_args(argv)

    question, context = full_window_text(args.data, args.length)
    spec = load_spec(args.variants)
    variants = [v for v in spec if v.exists(args.root)]
    skipped = [v.name for v in spec if v not in variants]
    threads = [int(t) for t in args.threads.split(",")]
    runners = {}
    for v in variants:
        tok = (v.torch_dir(args.root) if v.is_torch else args.root / v.model) / "tokenizer.json"
        feeds = feeds_for(tok, v.kind, question, context, args.length)
        for t in threads:
            key = f"{v.name}@{t}"
            runners[key] = (torch_runner(v.torch_dir(args.root), v.kind, feeds, t) if v.is_torch
                            else ort_runner(v.path(args.root), feeds, t, packed_weights=v.weights_path(args.root)))
    times = interleaved(runners, args.repeats, args.warmup)
    results = {k: summary(v) for k, v in times.items()}
    for v in variants:
        base = next((b for b in variants if b.kind == v.kind and b.is_torch), None)
        for t in threads:
            if base is not None:
                ref = results[f"{base.name}@{t}"]["p50_ms"]
                results[f"{v.name}@{t}"]["speedup_vs_torch_fp32"] = round(ref / results[f"{v.name}@{t}"]["p50_ms"], 2)

    options = {}
    chosen = [v for v in variants if v.name in args.session_options.split(",")]
    if chosen:
        opt_runners = {}
        for v in chosen:
            feeds = feeds_for(args.root / v.model / "tokenizer.json", v.kind, question, context, args.length)
            for t in (1, 2, 4):
                for level in LEVELS:
                    opt_runners[f"{v.name}@{t}|{level}"] = ort_runner(v.path(args.root), feeds, t, level,
                                                                      packed_weights=v.weights_path(args.root))
        options = {k: summary(v) for k, v in interleaved(opt_runners, max(args.repeats // 2, 5), args.warmup).items()}
    out = {"window_tokens": args.length, "repeats": args.repeats, "warmup": args.warmup, "threads": threads,
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
           "variants": {v.name: {"kind": v.kind, "stage": v.stage, "file": os.path.relpath(v.path(args.root), args.root)}
                        for v in variants},
           "latency": results, "session_options": options, "skipped": skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
