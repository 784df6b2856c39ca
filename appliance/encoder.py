"""Sentence encoder for dense retrieval: int8 all-MiniLM-L6-v2 on onnxruntime.

Mean pooling over real tokens and L2 normalisation, as sentence-transformers does, so inner
product equals cosine similarity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.artifacts import load_verified_manifest, model_file
from appliance.windows import load_tokenizer


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class SentenceEncoder:
    """Owns one ORT session; encodes batches of texts into unit vectors."""

    def __init__(self, model_dir: Path, max_length: int = 256, threads: int = 2, onnx_name: str | None = None):
        self.model_dir = Path(model_dir)
        self.manifest = load_verified_manifest(self.model_dir)
        onnx_path = self.model_dir / onnx_name if onnx_name else model_file(self.model_dir, self.manifest, "onnx")
        self.tokenizer = load_tokenizer(model_file(self.model_dir, self.manifest, "tokenizer"))
        self.tokenizer.enable_truncation(max_length)
        self.session = make_session(onnx_path, threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.sha256 = self.manifest["files"][onnx_path.name]["sha256"] if onnx_path.name in self.manifest["files"] else ""

    @property
    def dim(self) -> int:
        return int(self.manifest.get("dim", 384))

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = self._encode_batch([texts[j] for j in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
