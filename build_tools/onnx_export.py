"""Shared ONNX export, int8 per-channel quantisation and parity checks for BERT-style models."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _keyword_wrapper(model, output_names: list[str]):
    """transformers 5 forward() takes other positional args: trace a kwargs-only call instead."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return tuple(out[name] for name in output_names)

    return Wrapper().eval()


def export_onnx(model, path: Path, output_names: list[str], opset: int = 17) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False) and dynamic batch/sequence."""
    import torch

    model = _keyword_wrapper(model.eval(), output_names)
    dummy = {
        "input_ids": torch.ones(1, 16, dtype=torch.long),
        "attention_mask": torch.ones(1, 16, dtype=torch.long),
        "token_type_ids": torch.zeros(1, 16, dtype=torch.long),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in dummy}
    axes.update({name: {0: "batch", 1: "sequence"} for name in output_names})
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]), str(path),
            input_names=list(dummy), output_names=output_names, dynamic_axes=axes,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8, per-channel weights (per-tensor loses too much on MiniLM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)
