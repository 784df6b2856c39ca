"""fuse: run onnxruntime.transformers' BERT optimizer (attention, LayerNorm, GELU, bias fusions)
on an fp32 ONNX model, then optionally quantise the fused graph; the alternative is leaving
fusion to onnxruntime at session load (ORT_ENABLE_ALL), which the benchmark compares."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from build_tools.compress.quantize import copy_metadata
from build_tools.manifest import invocation, write_manifest


def fuse_bert(src: Path, dst: Path, num_heads: int, hidden_size: int, opt_level: int) -> dict:
    """Offline BERT fusions; returns the count of each fused operator."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=opt_level, use_gpu=False)
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def attention_shape(src: Path, num_heads: int, hidden_size: int) -> tuple[int, int]:
    """Explicit values win; else the (uniform) head count of a compress-exported model's layout,
    since the optimizer's own detection fails on graphs whose layers were cut down."""
    if num_heads and hidden_size:
        return num_heads, hidden_size
    manifest = json.loads((src / "manifest.json").read_text()) if (src / "manifest.json").exists() else {}
    layout = manifest.get("source", {}).get("layout", {}) if isinstance(manifest.get("source"), dict) else {}
    heads = set(layout.get("heads", []))
    if len(heads) == 1 and layout.get("head_size"):
        h = heads.pop()
        return h, h * layout["head_size"]
    return num_heads, hidden_size


def quantize_fused(src: Path, dst: Path) -> None:
    """quantize_int8's settings; fused contrib ops (com.microsoft Attention) defeat ONNX shape
    inference, so tensor types default to float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools fuse", description=__doc__)
    p.add_argument("--model", required=True, help="dir with the fp32 model.onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=["reader", "retriever"], default="reader")
    p.add_argument("--num-heads", type=int, default=0, help="0 = detect from the graph (pruned models differ per layer)")
    p.add_argument("--hidden-size", type=int, default=0, help="0 = detect from the graph")
    p.add_argument("--opt-level", type=int, default=0, help="ORT graph optimisation applied offline as well (0 = none)")
    p.add_argument("--quantize", choices=["none", "dynamic"], default="dynamic")
    args = p.parse_args(argv)

    src, out = Path(args.model), Path(args.out)
    kept = copy_metadata(src, out)
    started = time.time()
    heads, hidden = attention_shape(src, args.num_heads, args.hidden_size)
    fused = fuse_bert(src / "model.onnx", out / "model.fused.onnx", heads, hidden, args.opt_level)
    name = "model.fused.onnx"
    how = "fp32"
    if args.quantize == "dynamic":
        name = "model.fused.int8.onnx"
        quantize_fused(out / "model.fused.onnx", out / name)
        how = "dynamic int8, per-channel weights, after fusion"
    files = {"onnx": name, "tokenizer": "tokenizer.json"}
    manifest = write_manifest(out, roles=files, rebuild=invocation(),
                              extra={**kept, "fused_from": str(src / "model.onnx"), "fused_operators": fused,
                                     "num_heads": heads, "hidden_size": hidden,
                                     "quantization": how})
    print(json.dumps({"out": str(out / name), "bytes": manifest["files"][name]["bytes"], "fused_operators": fused,
                      "seconds": round(time.time() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
