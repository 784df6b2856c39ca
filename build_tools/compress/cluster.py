"""cluster: int8 ONNX model dir -> packed model dir about half the size (k-means weight clustering).

Every large int8 weight is clustered channel by channel (a MatMul weight's output column, an
embedding's row) to at most k int8 levels with 1-D k-means (k = 16 for MatMul weights, 8 for
embedding tables by default), then stored as a codebook per channel plus ceil(log2 k)-bit
indices (see appliance/packed.py for the format and how it is loaded). The graph is unchanged,
so inference speed is the int8 model's. --keep leaves chosen MatMul weights at full int8.

With --calibration N (the default), the k-means of a MatMul column weights each input feature by
its mean squared activation on N real (question, passage) windows: the error of an output is
sum_k x_k * (w_k - q_k), so features that carry large activations get the closer levels.
Embedding rows are clustered unweighted.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from appliance.packed import FORMAT, MISSING_FILE, bits_for, pack_indices
from build_tools.manifest import invocation, write_manifest

LEVELS = 256


def histogram(values: np.ndarray, weights: np.ndarray, low: int) -> np.ndarray:
    """[channels, length] ints -> [channels, 256] summed weights per int8 level."""
    channels = values.shape[0]
    codes = (values.astype(np.int64) - low) + LEVELS * np.arange(channels)[:, None]
    return np.bincount(codes.ravel(), weights=np.broadcast_to(weights, values.shape).ravel(),
                       minlength=channels * LEVELS).reshape(channels, LEVELS)


def kmeans_levels(hist: np.ndarray, k: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted 1-D k-means over the 256 levels of each channel (Lloyd).

    The start spans the channel's whole range, smallest to largest value (quantiles 0, 1/(k-1), …, 1):
    starting inside it lets the tails collapse into inner clusters, and the few large weights
    are the ones that matter (measured: F1 73.1 with inner quantiles vs 73.8 with the range).

    Returns (centroids [channels, k] as integer level numbers, level -> cluster map [channels, 256])."""
    levels = np.arange(LEVELS, dtype=np.float64)
    cum = np.cumsum(hist, axis=1)
    cum /= np.maximum(cum[:, -1:], 1e-30)
    targets = np.clip(np.arange(k) / (k - 1), 1e-9, 1 - 1e-9)
    centroids = np.stack([np.argmax(cum >= t, axis=1) for t in targets], axis=1).astype(np.float64)
    slots = (np.arange(hist.shape[0]) * k)[:, None]  # flat (channel, cluster) index = channel * k + cluster
    for _ in range(iterations):
        assign = np.abs(levels[None, :, None] - centroids[:, None, :]).argmin(-1)
        flat = (slots + assign).ravel()
        mass = np.bincount(flat, weights=hist.ravel(), minlength=centroids.size).reshape(centroids.shape)
        moment = np.bincount(flat, weights=(hist * levels[None, :]).ravel(),
                             minlength=centroids.size).reshape(centroids.shape)
        centroids = np.where(mass > 0, moment / np.maximum(mass, 1e-30), centroids)
        reseed_empty_clusters(centroids, mass, hist, assign, levels)
    centroids = np.clip(np.round(centroids), 0, LEVELS - 1)
    assign = np.abs(levels[None, :, None] - centroids[:, None, :]).argmin(-1)
    return centroids.astype(np.int64), assign


def reseed_empty_clusters(centroids, mass, hist, assign, levels) -> None:
    """Move one empty cluster per channel onto the level that costs most where it is now.

    Without this, duplicate starts (few distinct levels) leave clusters idle while distinct
    levels share one centroid."""
    empty = mass == 0
    if not empty.any():
        return
    current = np.take_along_axis(centroids, assign, axis=1)
    cost = hist * (levels[None, :] - current) ** 2
    rows = np.nonzero(empty.any(axis=1) & (cost.max(axis=1) > 0))[0]
    centroids[rows, empty[rows].argmax(axis=1)] = cost[rows].argmax(axis=1)


def cluster_channels(values: np.ndarray, weights: np.ndarray, k: int, iterations: int,
                     chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """[channels, length] int8/uint8 -> (codebook [channels, k] same dtype, indices [channels, length])."""
    info = np.iinfo(values.dtype)
    codebook = np.empty((values.shape[0], k), dtype=values.dtype)
    indices = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], chunk):
        part = values[start : start + chunk]
        centroids, assign = kmeans_levels(histogram(part, weights, info.min), k, iterations)
        codebook[start : start + chunk] = (centroids + info.min).astype(values.dtype)
        indices[start : start + chunk] = np.take_along_axis(assign, part.astype(np.int64) - info.min, axis=1)
    return codebook, indices


def clusterable(model, min_size: int, keep: str = "") -> dict[str, int]:
    """Initializer name -> channel axis, for the large int8 weights whose channels we know.

    MatMulInteger's B is quantised per output column (axis 1); a Gather's table per row (axis 0).
    A MatMul whose node name matches the regular expression ``keep`` is left out."""
    import re

    from onnx import TensorProto

    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer
             if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) == 2}
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in sizes:
            if not (keep and re.search(keep, node.name)):
                axes[node.input[1]] = 1
        elif node.op_type == "Gather" and node.input[0] in sizes:
            axes[node.input[0]] = 0
    return {name: axis for name, axis in axes.items() if sizes[name] >= min_size}


def activation_importance(model, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Weight name -> mean squared input activation per input feature, over real windows."""
    import onnx
    import onnxruntime as ort

    inputs: dict[str, str] = {}  # weight -> fp32 activation feeding its DynamicQuantizeLinear
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in names:
            quantizer = producers.get(node.input[0])
            if quantizer is not None and quantizer.op_type == "DynamicQuantizeLinear":
                inputs[node.input[1]] = quantizer.input[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # the loaded graph, with the activations added as outputs
    known = {o.name for o in probe.graph.output}
    for tensor in sorted(set(inputs.values()) - known):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = sorted(set(inputs.values()))
    sums = {t: 0.0 for t in wanted}
    tokens = 0
    for feed in feeds:
        outs = session.run(wanted, feed)
        for t, x in zip(wanted, outs):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[t] = sums[t] + (x * x).sum(axis=0)
        tokens += int(np.prod(outs[0].shape[:-1]))
    importance = {w: sums[t] / max(tokens, 1) for w, t in inputs.items()}
    return importance | embedding_importance(model, [n for n in names if n not in inputs])


def embedding_importance(model, tables: list[str]) -> dict[str, np.ndarray]:
    """Embedding table -> gamma^2 of the LayerNorm that normalises the summed embeddings.

    After that LayerNorm an error in dimension d is scaled by gamma_d (over the same sigma for
    every dimension), so its squared size is what the row clustering should weigh."""
    from onnx import numpy_helper

    norm = next((n for n in model.graph.node if n.op_type == "LayerNormalization"), None)
    initializers = {t.name: t for t in model.graph.initializer}
    if norm is None or norm.input[1] not in initializers:
        return {}
    gamma = numpy_helper.to_array(initializers[norm.input[1]]).astype(np.float64)
    return {t: gamma * gamma for t in tables}


def external_reference(tensor) -> None:
    """Drop the tensor's bytes; point it at a file that does not exist (the packed weights fill it)."""
    from onnx import TensorProto

    nbytes = int(np.prod(tensor.dims))
    tensor.ClearField("raw_data")
    tensor.ClearField("int32_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", MISSING_FILE), ("offset", "0"), ("length", str(nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def pack_model(src_onnx: Path, out: Path, clusters: dict[int, int], iterations: int, min_size: int,
               feeds: list[dict], keep: str = "") -> dict:
    """Cluster, write model.onnx (skeleton) + weights.npz; return what was done, per tensor.

    ``clusters`` maps channel axis -> k (axis 1: MatMul columns, axis 0: embedding rows)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src_onnx))
    axes = clusterable(model, min_size, keep)
    importance = activation_importance(model, list(axes), feeds) if feeds else {}
    arrays: dict[str, np.ndarray] = {}
    tensors = []
    for i, tensor in enumerate(t for t in model.graph.initializer if t.name in axes):
        weight = numpy_helper.to_array(tensor)
        axis = axes[tensor.name]
        channels = weight if axis == 0 else weight.T
        feature_weight = importance.get(tensor.name)
        if feature_weight is None or feature_weight.shape != (channels.shape[1],):
            feature_weight = np.ones(channels.shape[1])
        k = clusters[axis]
        codebook, indices = cluster_channels(np.ascontiguousarray(channels), feature_weight[None, :], k, iterations)
        key = f"t{i}"
        arrays[f"{key}.codebook"], arrays[f"{key}.indices"] = codebook, pack_indices(indices, bits_for(k))
        clustered = np.take_along_axis(codebook, indices.astype(np.intp), axis=1)
        error = float(np.sqrt(np.mean((clustered.astype(np.float64) - channels) ** 2)))
        tensors.append({"key": key, "name": tensor.name, "shape": list(weight.shape), "axis": axis,
                        "dtype": str(weight.dtype), "clusters": k, "rms_change_in_levels": round(error, 3),
                        "importance_weighted": tensor.name in importance})
        external_reference(tensor)
    arrays["meta"] = np.array(json.dumps({"format": FORMAT, "tensors": tensors}))
    np.savez_compressed(out / "weights.npz", **arrays)  # deflate: -0.3 MB of sorted codebooks, +40 ms to load
    onnx.save(model, str(out / "model.onnx"))
    return {"tensors": tensors, "weights": int(sum(np.prod(t["shape"]) for t in tensors))}


def sample_feed(names: set[str], tokenizer_path: Path) -> dict:
    """One fixed (question, passage) window, for the parity check when nothing was calibrated."""
    from appliance.windows import load_tokenizer

    encoding = load_tokenizer(tokenizer_path).encode("How long does the Quick program take?",
                                                     "The Quick program takes 30 minutes at 45 degrees.")
    ids = np.array([encoding.ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
    return {k: v for k, v in feed.items() if k in names}


def main(argv: list[str] | None = None) -> None:
    from build_tools.compress.quantize import CALIBRATION_DATA, WindowReader, calibration_windows, copy_metadata
    from build_tools.onnx_export import onnx_runner, parity

    p = argparse.ArgumentParser(prog="build_tools cluster", description=__doc__)
    p.add_argument("--model", required=True, help="int8 model dir (export-reader, quantize, fuse)")
    p.add_argument("--onnx", default=None, help="int8 ONNX file in --model (default: its manifest's)")
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=["reader", "retriever"], default="reader")
    p.add_argument("--clusters", type=int, default=16, help="levels per MatMul column (2-16)")
    p.add_argument("--embedding-clusters", type=int, default=8, help="levels per embedding row (2-16)")
    p.add_argument("--keep", default="", help="regular expression: MatMul nodes (by name) left at full int8")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--min-size", type=int, default=100_000, help="cluster only weights with this many values")
    p.add_argument("--calibration", type=int, default=64, help="windows for activation weighting (0 = unweighted)")
    p.add_argument("--calibration-data", type=Path, default=CALIBRATION_DATA, help="SQuAD-format file")
    args = p.parse_args(argv)
    if not (2 <= args.clusters <= 16 and 2 <= args.embedding_clusters <= 16):
        p.error("--clusters and --embedding-clusters must be between 2 and 16 (indices take at most 4 bits)")

    src, out = Path(args.model), Path(args.out)
    manifest = json.loads((src / "manifest.json").read_text())
    src_onnx = src / (args.onnx or manifest["roles"]["onnx"])
    kept = copy_metadata(src, out)
    started = time.time()
    import onnx

    names = {i.name for i in onnx.load(str(src_onnx), load_external_data=False).graph.input}
    feeds = []
    if args.calibration:
        windows = calibration_windows(out / "tokenizer.json", args.calibration, args.calibration_data)
        feeds = WindowReader(windows, names, args.kind).feeds
    done = pack_model(src_onnx, out, {1: args.clusters, 0: args.embedding_clusters}, args.iterations,
                      args.min_size, feeds, args.keep)
    check = parity(onnx_runner(src_onnx, args.kind), onnx_runner(out / "model.onnx", args.kind, out / "weights.npz"),
                   feeds[:8] or [sample_feed(names, out / "tokenizer.json")], args.kind)
    how = {"clusters_per_matmul_column": args.clusters, "clusters_per_embedding_row": args.embedding_clusters,
           "kept_int8": args.keep or None, "iterations": args.iterations, "min_size": args.min_size,
           "activation_weighted_on": f"{len(feeds)} windows of {args.calibration_data.name}" if feeds else None,
           "weights_clustered": done["weights"], "tensors": len(done["tensors"]), "parity_vs_int8": check}
    result = write_manifest(out, roles={"onnx": "model.onnx", "weights": "weights.npz", "tokenizer": "tokenizer.json"},
                            rebuild=invocation(),
                            extra={**kept, "clustered_from": str(src_onnx),
                                   "int8_source": {"sha256": manifest["files"][src_onnx.name]["sha256"],
                                                   "bytes": src_onnx.stat().st_size,
                                                   "rebuild": manifest.get("rebuild", "")},
                                   "clustering": how})
    size = sum(f["bytes"] for name, f in result["files"].items() if name != "tokenizer.json")
    print(json.dumps({"out": str(out), "model_bytes": size, "source_bytes": src_onnx.stat().st_size,
                      "seconds": round(time.time() - started, 1), **how}, indent=2))


if __name__ == "__main__":
    main()
