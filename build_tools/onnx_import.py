"""Load the weights of an exported (optionally int8-quantised) BERT ONNX graph back into PyTorch.

Why: a training job whose checkpoint is gone (a new machine) warm-starts from the shipped
reader instead of from scratch; the shipped reader exists only as ONNX.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_MATMUL_OPS = {"MatMul", "MatMulInteger"}


def _dequantized(inits: dict, name: str) -> np.ndarray:
    """The float value of an initialiser, undoing onnxruntime's dynamic (per-channel) int8."""
    from onnx import numpy_helper

    base = name.removesuffix("_quantized")
    value = numpy_helper.to_array(inits[name])
    if name == base:
        return value.astype(np.float32)
    scale = numpy_helper.to_array(inits[base + "_scale"]).astype(np.float32)
    zero = numpy_helper.to_array(inits[base + "_zero_point"]).astype(np.float32)
    return (value.astype(np.float32) - zero) * scale  # scale/zero broadcast over output columns


def _module_path(node_name: str) -> str:
    """'/model/bert/encoder/layer.0/attention/self/query/MatMul_quant' -> 'bert.encoder.layer.0.attention.self.query'."""
    parts = node_name.strip("/").split("/")[:-1]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts)


def onnx_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """Parameter name -> float array, for every weight the graph stores."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name in inits:
        base = name.removesuffix("_quantized")
        if base.startswith("model.") and not base.endswith(("_scale", "_zero_point")):
            state[base.removeprefix("model.")] = _dequantized(inits, name)
    for node in graph.node:
        if node.op_type in _MATMUL_OPS and len(node.input) > 1 and node.input[1] in inits:
            state[_module_path(node.name) + ".weight"] = _dequantized(inits, node.input[1]).T.copy()
    return state


def load_onnx_weights(model, onnx_path: Path, unused: tuple[str, ...] = ()) -> int:
    """Copy every weight of ``onnx_path`` into the matching parameter of ``model``; raises
    ValueError when a parameter is missing or shaped differently. ``unused``: name prefixes of
    parameters the graph may lack because its outputs never use them (the retriever's embeddings
    are mean-pooled, so its export has no BERT pooler); those keep their values. Returns the count
    copied."""
    import torch

    state = onnx_state_dict(Path(onnx_path))
    params = {n: p for n, p in model.named_parameters() if n in state or not n.startswith(unused)}
    missing = [n for n in params if n not in state]
    if missing:
        raise ValueError(f"{onnx_path}: no weights for {missing[:5]} (not an export of this architecture)")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(state[name])
            if value.shape != param.shape:
                raise ValueError(f"{onnx_path}: {name} has shape {tuple(value.shape)}, model wants {tuple(param.shape)}")
            param.copy_(value)
    return len(params)
