"""compress-export: a (possibly pruned or distilled) checkpoint -> fp32 ONNX model dir + manifest,
with a parity check of the ONNX logits/embeddings against the PyTorch model it came from."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from build_tools.compress.common import count_parameters, load_model
from build_tools.manifest import invocation
from build_tools.onnx_export import OUTPUTS, export_model, sample_windows, window_feed
from build_tools.paths import SQUAD_DIR


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
    feeds = []
    if args.parity_samples and args.parity_data.exists():
        feeds = [window_feed(w, args.kind) for w in
                 sample_windows(src / "tokenizer.json", args.parity_samples, data=args.parity_data)]
    manifest = export_model(model, args.kind, out, src / "tokenizer.json", rebuild=invocation(),
                            extra={"source": source, "parameters": count_parameters(model)}, parity_feeds=feeds)
    print(json.dumps({"out": str(out), "parity_vs_pytorch": manifest.get("parity_vs_pytorch"),
                      "bytes": manifest["files"]["model.onnx"]["bytes"]}, indent=2))


if __name__ == "__main__":
    main()
