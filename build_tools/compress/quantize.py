"""quantize: fp32 ONNX model dir -> int8 model dir, dynamic (per-channel weights, activations
quantised on the fly) or static QDQ (activation ranges calibrated on real question+passage
windows from SQuAD train, not on the dev data used for the report)."""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from build_tools.manifest import invocation, write_manifest
from build_tools.onnx_export import quantize_int8, sample_windows, window_feed
from build_tools.paths import SQUAD_DIR

CALIBRATION_DATA = SQUAD_DIR / "train-v2.0-first10-articles.json"


class WindowReader:
    """onnxruntime CalibrationDataReader over real windows, one window per batch."""

    def __init__(self, windows, input_names: set[str], kind: str):
        self.feeds = [{k: v for k, v in window_feed(w, kind).items() if k in input_names} for w in windows]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def calibration_windows(tokenizer_path: Path, n: int, data: Path = CALIBRATION_DATA, seed: int = 0):
    """n windows of randomly chosen (question, passage) pairs of the calibration file."""
    import random

    from build_tools.squad import load_squad

    total = len(load_squad(data))
    windows = sample_windows(tokenizer_path, total, data=data)
    random.Random(seed).shuffle(windows)
    return windows[:n]


def quantize_static_qdq(src: Path, dst: Path, windows, kind: str, op_types: list[str], method: str) -> None:
    """Static int8 QDQ: per-channel int8 weights, uint8 activations with calibrated ranges."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.stem + ".prep.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # symbolic fails on BERT's masks
    names = {i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input}
    quantize_static(str(prepared), str(dst), WindowReader(windows, names, kind), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=op_types,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile,
                                      "entropy": CalibrationMethod.Entropy}[method],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    prepared.unlink(missing_ok=True)


def copy_metadata(src: Path, out: Path) -> dict:
    """Tokenizer next to the new model; source manifest fields worth keeping."""
    out.mkdir(parents=True, exist_ok=True)
    if src.resolve() != out.resolve():
        shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    manifest = json.loads((src / "manifest.json").read_text()) if (src / "manifest.json").exists() else {}
    return {k: manifest[k] for k in ("source", "parameters", "dim") if k in manifest}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="build_tools quantize", description=__doc__)
    p.add_argument("--model", required=True, help="dir with the fp32 model.onnx (compress-export or fuse)")
    p.add_argument("--onnx", default="model.onnx", help="fp32 file inside --model")
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=["reader", "retriever"], default="reader")
    p.add_argument("--method", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--calibration-data", type=Path, default=CALIBRATION_DATA, help="SQuAD-format file")
    p.add_argument("--calibration-samples", type=int, default=128)
    p.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    p.add_argument("--op-types", default="MatMul,Gather", help="ops quantised by the static method")
    args = p.parse_args(argv)

    src, out = Path(args.model), Path(args.out)
    kept = copy_metadata(src, out)
    started = time.time()
    name = "model.int8.onnx"
    if args.method == "dynamic":
        quantize_int8(src / args.onnx, out / name)
        how = "dynamic int8, per-channel weights (onnxruntime quantize_dynamic)"
    else:
        windows = calibration_windows(out / "tokenizer.json", args.calibration_samples, args.calibration_data)
        quantize_static_qdq(src / args.onnx, out / name, windows, args.kind, args.op_types.split(","),
                            args.calibration_method)
        how = (f"static int8 QDQ, per-channel weights, {args.calibration_method} calibration on "
               f"{len(windows)} windows of {args.calibration_data.name}, ops {args.op_types}")
    manifest = write_manifest(out, roles={"onnx": name, "tokenizer": "tokenizer.json"}, rebuild=invocation(),
                              extra={**kept, "quantized_from": str(src / args.onnx), "quantization": how})
    print(json.dumps({"out": str(out / name), "bytes": manifest["files"][name]["bytes"], "quantization": how,
                      "seconds": round(time.time() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
