"""`appliance ask` latency, cold start and peak RSS: shipped int8 ONNX pipeline vs the same
pipeline on the fp32 PyTorch models, measured in one run, interleaved, on the same questions.

    python -m benchmarks.ask_latency [--questions 50] [--threads 2] [--checkpoint DIR]
        [--config appliance.toml] [--compare a.toml b.toml ...] [--no-baseline] [--no-cold]

``--no-baseline`` times the shipped pipeline alone (no torch needed); per-stage figures are the
pipeline's own ``timings_ms`` plus the reader's tokenisation measured apart; CPU time per answer
(every thread of the process, ``time.process_time``) is the energy proxy on a box without a power
meter. ``--compare`` adds one
int8 pipeline per TOML (named by its file stem), interleaved with the others question by question,
so load from other processes hits every setting alike (how docs/RESULTS.md's "Reading fewer tokens" is timed).

Needs the ``build`` extra (torch, transformers) for the PyTorch baseline; prints JSON.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUESTION_FILES = sorted((ROOT / "tests" / "data").glob("kb_questions_*.json"))


class TorchEncoder:
    """all-MiniLM-L6-v2 in PyTorch fp32, mean pooled: the encoder the int8 ONNX one replaces."""

    def __init__(self, onnx_encoder, threads: int):
        import torch
        from transformers import AutoModel

        from build_tools.paths import minilm_dir

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModel.from_pretrained(minilm_dir()).eval()
        self.tokenizer, self.dim = onnx_encoder.tokenizer, onnx_encoder.dim
        self.sha256 = onnx_encoder.sha256

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch(texts[i : i + batch_size])
            width = max(len(e.ids) for e in encodings)
            ids = np.zeros((len(encodings), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, e in enumerate(encodings):
                ids[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, 1
            with self.torch.no_grad():
                hidden = self.model(input_ids=self.torch.from_numpy(ids),
                                    attention_mask=self.torch.from_numpy(mask)).last_hidden_state.numpy()
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)


def cold_start(index_dir: Path, question: str) -> dict:
    """A fresh `appliance ask` process: wall time and its peak RSS."""
    code = ("import resource, sys, time; t = time.perf_counter();"
            "from appliance.cli import main; rc = main(['ask', sys.argv[1], '--index', sys.argv[2]]);"
            "print('WALL', time.perf_counter() - t, 'RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, question, str(index_dir)], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    fields = proc.stdout.split()
    return {"wall_s": round(float(fields[fields.index("WALL") + 1]), 3),
            "peak_rss_mb": round(int(fields[fields.index("RSS") + 1]) / 1024, 1)}


def tokenise_ms(pipe, question: str) -> float:
    """The reader's tokenisation of this question's passages that can answer (headings included,
    as the box reads them), timed apart: an upper bound, since early stopping may read fewer."""
    hits = pipe.retrieve(question)
    passages = [pipe.index.passages[h.index] for h in hits[: pipe.passages_that_can_answer(len(hits))]]
    pairs, headings = pipe.reader_inputs(question, passages)
    t = time.perf_counter()
    pipe.reader.windows(pairs, headings)
    return (time.perf_counter() - t) * 1000


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def shipped_reader_in_torch(model_dir: Path) -> Path:
    """The shipped reader's weights (dequantised from its ONNX) as a PyTorch fp32 model: the
    baseline needs no training run's checkpoint on this machine, and it times the same network."""
    import tempfile

    from transformers import AutoModelForQuestionAnswering

    from build_tools.onnx_import import load_onnx_weights
    from build_tools.paths import minilm_dir

    out = Path(tempfile.mkdtemp(prefix="reader-torch-"))
    model = AutoModelForQuestionAnswering.from_pretrained(minilm_dir())
    load_onnx_weights(model, sorted(model_dir.glob("*.onnx"))[0])
    model.save_pretrained(out)
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="PyTorch reader for the baseline (default: the shipped reader's weights in PyTorch fp32)")
    p.add_argument("--index", type=Path, default=ROOT / "build" / "bench-index")
    p.add_argument("--config", type=Path, default=None, help="appliance TOML (default: the shipped config)")
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="more appliance TOMLs, timed interleaved")
    p.add_argument("--no-baseline", action="store_true", help="skip the PyTorch fp32 pipeline")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start CLI runs")
    args = p.parse_args(argv)

    from appliance import runtime
    from appliance.config import Config, load_config

    questions = [q["question"] for f in QUESTION_FILES for q in json.loads(f.read_text())][: args.questions]
    config = load_config(args.config) if args.config else Config()
    config.retriever.threads = config.reader.threads = args.threads
    onnx = runtime.load_pipeline(config, index=args.index)
    cold = [] if args.no_cold else [cold_start(args.index, questions[0]) for _ in range(3)]

    pipes = {"onnx_int8": onnx}
    if not args.no_baseline:
        from build_tools.torch_reader import TorchReader

        baseline = runtime.load_pipeline(config, index=args.index)
        baseline.encoder = TorchEncoder(onnx.encoder, args.threads)
        baseline.retriever.encoder = baseline.encoder
        checkpoint = args.checkpoint or shipped_reader_in_torch(config.resolve(config.paths.reader_model))
        baseline.reader._run = TorchReader(checkpoint, config.reader)._run  # same windows, PyTorch fp32
        if args.checkpoint is None:
            shutil.rmtree(checkpoint)  # loaded; the converted copy is not kept
        pipes["pytorch_fp32"] = baseline
    for path in args.compare:
        other = load_config(path)
        other.retriever.threads = other.reader.threads = args.threads
        pipes[path.stem] = runtime.load_pipeline(other, index=args.index)

    for pipe in pipes.values():  # warm-up
        pipe.ask(questions[0])
    times: dict[str, list[float]] = {k: [] for k in pipes}
    cpu: dict[str, list[float]] = {k: [] for k in pipes}  # CPU-seconds per answer, all threads: the energy proxy
    stages: dict[str, dict[str, list[float]]] = {k: {"retrieval": [], "reader": []} for k in pipes}
    stages["onnx_int8"]["reader_tokenise"] = []
    texts: dict[str, list[str]] = {k: [] for k in pipes}
    for q in questions:  # interleaved so drift hits both alike
        for name, pipe in pipes.items():
            t, c = time.perf_counter(), time.process_time()
            a = pipe.ask(q)
            times[name].append((time.perf_counter() - t) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
            texts[name].append(a.text)
            stages[name]["retrieval"].append(a.timings_ms["retrieval"])
            stages[name]["reader"].append(a.timings_ms["reader"])
            if name == "onnx_int8":
                stages[name]["reader_tokenise"].append(tokenise_ms(pipe, a.question))
    result = {
        "questions": len(questions), "threads": args.threads, "config": str(args.config or "shipped defaults"),
        "warm_latency_ms": {k: {"p50": percentile(v, 50), "p95": percentile(v, 95),
                                "mean": round(statistics.mean(v), 1)} for k, v in times.items()},
        "cpu_ms_per_answer": {k: {"p50": percentile(v, 50), "mean": round(statistics.mean(v), 1)}
                              for k, v in cpu.items()},
        "stage_ms": {name: {k: {"p50": percentile(v, 50), "p95": percentile(v, 95)} for k, v in per.items()}
                     for name, per in stages.items() if name != "pytorch_fp32"},
    }
    for name in args.compare:
        result.setdefault("same_answer_text_as_onnx_int8", {})[name.stem] = \
            f"{sum(a == b for a, b in zip(texts['onnx_int8'], texts[name.stem]))}/{len(questions)}"
    if "pytorch_fp32" in pipes:
        agree = sum(a == b for a, b in zip(texts["onnx_int8"], texts["pytorch_fp32"]))
        result["speedup_p50"] = round(percentile(times["pytorch_fp32"], 50) / percentile(times["onnx_int8"], 50), 2)
        result["same_answer_text"] = f"{agree}/{len(questions)}"
    if cold:
        result["cold_start_int8_cli"] = {"wall_s_median": statistics.median(c["wall_s"] for c in cold),
                                         "peak_rss_mb_max": max(c["peak_rss_mb"] for c in cold)}
    result["benchmark_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
