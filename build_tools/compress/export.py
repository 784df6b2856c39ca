"""compress-export: a (possibly pruned or distilled) checkpoint -> fp32 ONNX model dir + manifest,
with a parity check of the ONNX logits/embeddings against the PyTorch model it came from."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from build_tools.compress.common import count_parameters, load_model
from build_tools.manifest import invocation, write_manifest
from build_tools.onnx_export import export_onnx
from build_tools.paths import SQUAD_DIR
from build_tools.squad import load_squad

OUTPUTS = {"reader": ["start_logits", "end_logits"], "retriever": ["last_hidden_state"]}


def sample_windows(tokenizer_path: Path, n: int, max_length: int = 256, stride: int = 96,
                   data: Path = SQUAD_DIR / "dev-v1.1-42-articles.json"):
    """First windows of the first n (question, passage) pairs of a SQuAD file: real model inputs."""
    from appliance.windows import load_tokenizer, make_windows

    tokenizer = load_tokenizer(tokenizer_path)
    examples = load_squad(data)[:n]
    return [ws[0] for ws in make_windows(tokenizer, [(e.question, e.context) for e in examples], max_length, stride)
            if ws]


def torch_outputs(model, window, kind: str) -> list[np.ndarray]:
    import torch

    ids = torch.from_numpy(window.input_ids[None])
    types = torch.from_numpy(window.token_type_ids[None]) if kind == "reader" else torch.zeros_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types)
    return [out[name].numpy() for name in OUTPUTS[kind]]


def onnx_outputs(session, window, kind: str) -> list[np.ndarray]:
    ids = window.input_ids[None]
    types = window.token_type_ids[None] if kind == "reader" else np.zeros_like(ids)
    return session.run(OUTPUTS[kind], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types})


def parity(model, onnx_path: Path, windows, kind: str) -> dict:
    """Max |difference| of the outputs, and (reader) agreement of the argmax start/end."""
    from appliance.encoder import make_session

    session = make_session(onnx_path, 1)
    diffs, agree = [], []
    for w in windows:
        ref, got = torch_outputs(model, w, kind), onnx_outputs(session, w, kind)
        diffs.append(max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
        agree.append(all(a.argmax() == b.argmax() for a, b in zip(ref, got)))
    return {"windows": len(windows), "max_abs_diff": round(max(diffs), 5),
            "argmax_agreement": round(float(np.mean(agree)), 4)}


def export_dir(model, kind: str, out: Path, tokenizer_json: Path, source: dict) -> dict:
    """Write out/model.onnx, tokenizer.json and a manifest the runtime can load."""
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / "model.onnx", OUTPUTS[kind])
    if tokenizer_json.resolve() != (out / "tokenizer.json").resolve():
        shutil.copy(tokenizer_json, out / "tokenizer.json")
    extra = {"source": source, "parameters": count_parameters(model)}
    if kind == "retriever":
        extra["dim"] = model.config.hidden_size
    return write_manifest(out, roles={"onnx": "model.onnx", "tokenizer": "tokenizer.json"},
                          rebuild=invocation(), extra=extra)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools compress-export", description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint dir (save_pretrained or a compress command's)")
    p.add_argument("--kind", choices=list(OUTPUTS), default="reader")
    p.add_argument("--out", required=True)
    p.add_argument("--parity-samples", type=int, default=50, help="0 = skip the parity check")
    p.add_argument("--parity-data", type=Path, default=SQUAD_DIR / "dev-v1.1-42-articles.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    src, out = Path(args.model), Path(args.out)
    model = load_model(src, args.kind)
    source = {"checkpoint": str(src)}
    if (src / "layout.json").exists():
        source["layout"] = json.loads((src / "layout.json").read_text())
    export_dir(model, args.kind, out, src / "tokenizer.json", source)
    checks = None
    if args.parity_samples and args.parity_data.exists():
        windows = sample_windows(out / "tokenizer.json", args.parity_samples, data=args.parity_data)
        checks = parity(model, out / "model.onnx", windows, args.kind)
    manifest = write_manifest(out, roles={"onnx": "model.onnx", "tokenizer": "tokenizer.json"}, rebuild=invocation(),
                              extra={**{k: v for k, v in json.loads((out / "manifest.json").read_text()).items()
                                        if k in ("source", "parameters", "dim")}, "parity_vs_pytorch": checks})
    print(json.dumps({"out": str(out), "parity_vs_pytorch": checks,
                      "bytes": manifest["files"]["model.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
