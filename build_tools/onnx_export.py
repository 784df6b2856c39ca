"""The one ONNX exporter and the one parity check for BERT-style readers and retrievers.

``export_model`` writes a model directory the runtime loads (fp32 ONNX, tokenizer, manifest),
optionally a second one with the dynamic int8 per-channel model, and records in the shipped
manifest how far each ONNX file's outputs are from PyTorch's (``parity``). export-reader,
export-retriever and compress-export are thin commands around it; ``cluster`` uses the same
``parity`` to compare its packed model with the int8 one.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from build_tools.manifest import update_manifest, write_manifest

OUTPUTS = {"reader": ["start_logits", "end_logits"], "retriever": ["last_hidden_state"]}
INT8 = "dynamic int8, per-channel (onnxruntime quantize_dynamic)"

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], list[np.ndarray]]


def _keyword_wrapper(model, output_names: list[str]):
    """transformers 5 forward() takes other positional args: trace a kwargs-only call instead."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return tuple(out[name] for name in output_names)

    return Wrapper().eval()


def fp32_dir(fp32_out: str | None, int8_out: Path, kind: str) -> Path:
    """Where an export keeps its fp32 ONNX: as asked, else build/KIND-fp32 for the shipped models/KIND
    and OUT-fp32 beside any other int8 output, so exporting a snapshot or a candidate never
    overwrites the fp32 copy of the shipped model (it once did, and a benchmark then timed the
    wrong network)."""
    if fp32_out:
        return Path(fp32_out)
    if int8_out.resolve() == (Path("models") / kind).resolve():
        return Path("build") / f"{kind}-fp32"
    return int8_out.with_name(f"{int8_out.name}-fp32")


def export_onnx(model, path: Path, output_names: list[str], opset: int = 17) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False) and dynamic batch/sequence."""
    import torch

    model = _keyword_wrapper(model.eval(), output_names)
    dummy = {
        "input_ids": torch.ones(1, 16, dtype=torch.long),
        "attention_mask": torch.ones(1, 16, dtype=torch.long),
        "token_type_ids": torch.zeros(1, 16, dtype=torch.long),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in dummy}
    axes.update({name: {0: "batch", 1: "sequence"} for name in output_names})
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]), str(path),
            input_names=list(dummy), output_names=output_names, dynamic_axes=axes,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8, per-channel weights (per-tensor loses too much on MiniLM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def export_model(model, kind: str, out: Path, tokenizer_json: Path, *, rebuild: str, extra: dict | None = None,
                 int8_out: Path | None = None, parity_feeds: Sequence[Feed] = ()) -> dict:
    """Export ``model`` (a reader or retriever in PyTorch) as out/model.onnx + tokenizer.json + manifest;
    with ``int8_out`` also int8_out/model.int8.onnx (dynamic int8 per-channel) + tokenizer + manifest.

    With ``parity_feeds`` every written ONNX file is checked against ``model`` on them; the result
    goes into the manifest of the last directory written as ``parity_vs_pytorch`` (per label
    "fp32"/"int8" when both were written, else the fp32 check itself). Returns that manifest."""
    extra = dict(extra or {})
    if kind == "retriever":
        extra.setdefault("dim", model.config.hidden_size)
    targets = {"fp32": (out, "model.onnx")}
    if int8_out is not None:
        targets["int8"] = (int8_out, "model.int8.onnx")
    for d, _ in targets.values():
        d.mkdir(parents=True, exist_ok=True)
        if tokenizer_json.resolve() != (d / "tokenizer.json").resolve():
            shutil.copy(tokenizer_json, d / "tokenizer.json")
    export_onnx(model, out / "model.onnx", OUTPUTS[kind])
    if int8_out is not None:
        quantize_int8(out / "model.onnx", int8_out / "model.int8.onnx")
    manifest = {}
    for label, (d, name) in targets.items():
        fields = {**extra, "quantization": INT8} if label == "int8" else extra
        manifest = write_manifest(d, roles={"onnx": name, "tokenizer": "tokenizer.json"}, rebuild=rebuild,
                                  extra=fields)
    if parity_feeds:
        reference = torch_runner(model, kind)
        checks = {label: parity(reference, onnx_runner(d / name, kind), parity_feeds, kind)
                  for label, (d, name) in targets.items()}
        shipped = targets["int8" if int8_out is not None else "fp32"][0]
        manifest = update_manifest(shipped, parity_vs_pytorch=checks if int8_out is not None else checks["fp32"])
    return manifest


# --- inputs for the parity check -------------------------------------------------------------

def sample_windows(tokenizer_path: Path, n: int, max_length: int = 256, stride: int = 96, data: Path | None = None):
    """First windows of the first n (question, passage) pairs of a SQuAD file: real model inputs."""
    from appliance.windows import load_tokenizer, make_windows
    from build_tools.paths import SQUAD_DIR
    from build_tools.squad import load_squad

    tokenizer = load_tokenizer(tokenizer_path)
    examples = load_squad(data or SQUAD_DIR / "dev-v1.1-42-articles.json")[:n]
    return [ws[0] for ws in make_windows(tokenizer, [(e.question, e.context) for e in examples], max_length, stride)
            if ws]


def window_feed(window, kind: str) -> Feed:
    """One window as model inputs; a retriever sees the same tokens with token types 0."""
    ids = window.input_ids[None]
    types = window.token_type_ids[None] if kind == "reader" else np.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}


def text_feeds(tokenizer_path: Path, texts: Iterable[str], max_length: int) -> list[Feed]:
    """Single texts as retriever inputs, truncated like the runtime encoder truncates them."""
    from appliance.windows import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer.enable_truncation(max_length)
    feeds = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


# --- the parity check ------------------------------------------------------------------------

def torch_runner(model, kind: str) -> Runner:
    """``model``'s outputs (OUTPUTS[kind], in that order) for one feed."""
    import torch

    def run(feed: Feed) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return [out[name].float().numpy() for name in OUTPUTS[kind]]

    return run


def onnx_runner(path: Path, kind: str, packed_weights: Path | None = None) -> Runner:
    """One single-threaded ORT session of ``path`` (with a clustered model's packed weights)."""
    from appliance.model_dir import ort_session

    session = ort_session(path, 1, packed_weights)
    names = {i.name for i in session.get_inputs()}
    outputs = OUTPUTS[kind] if set(OUTPUTS[kind]) <= {o.name for o in session.get_outputs()} else None  # else all

    def run(feed: Feed) -> list[np.ndarray]:
        return session.run(outputs, {k: v for k, v in feed.items() if k in names})

    return run


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def parity(reference: Runner, candidate: Runner, feeds: Sequence[Feed], kind: str) -> dict:
    """How far ``candidate``'s outputs are from ``reference``'s on the same inputs: the largest
    |difference| (max and mean over inputs) against the largest |output|; for a reader how often the
    start and end argmax agree, for a retriever the cosine of the mean-pooled embeddings."""
    if not feeds:
        return {"windows": 0}
    diffs, scale, agree, cosines = [], [], [], []
    for feed in feeds:
        ref, got = reference(feed), candidate(feed)
        diffs.append(max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
        scale.append(max(float(np.abs(a).max()) for a in ref))
        if kind == "reader":
            agree.append(all(a.argmax() == b.argmax() for a, b in zip(ref, got)))
        else:
            mask = feed.get("attention_mask", np.ones_like(feed["input_ids"]))[..., None]
            pooled = [(x * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1) for x in (ref[0], got[0])]
            cosines.append(float(cosine_rows(*pooled)[0]))
    out = {"windows": len(feeds), "max_abs_diff": round(max(diffs), 5),
           "mean_abs_diff": round(float(np.mean(diffs)), 5), "max_abs_output": round(max(scale), 4)}
    if kind == "reader":
        out["argmax_agreement"] = round(float(np.mean(agree)), 4)
    else:
        out.update(min_cosine=round(min(cosines), 4), mean_cosine=round(float(np.mean(cosines)), 4))
    return out
