"""Sentence encoder for dense retrieval: int8 all-MiniLM-L6-v2 on onnxruntime.

Mean pooling over real tokens and L2 normalisation, as sentence-transformers does, so inner
product equals cosine similarity.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.artifacts import load_verified_manifest, model_file
from appliance.errors import ModelError
from appliance.packed import add_packed_weights
from appliance.windows import load_tokenizer


def make_session(path: Path, threads: int, packed_weights: Path | None = None) -> ort.InferenceSession:
    """One ORT session; ``packed_weights`` supplies the clustered tensors of a packed model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    keep_alive = add_packed_weights(options, packed_weights) if packed_weights else []  # noqa: F841 - until loaded
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind types; say which model failed
        raise ModelError(f"cannot load {path}: {exc}") from None


def model_fingerprint(manifest: dict, onnx_path: Path, weights: Path | None) -> str:
    """sha256 of the ONNX file, or of the ONNX and packed-weights hashes together: what an index
    records so that vectors from another encoder are never mixed with this one's."""
    files = manifest["files"]
    onnx_sha = files.get(onnx_path.name, {}).get("sha256", "")
    if weights is None:
        return onnx_sha
    return hashlib.sha256(f"{onnx_sha}:{files[weights.name]['sha256']}".encode()).hexdigest()


def packed_weights_file(model_dir: Path, manifest: dict) -> Path | None:
    """The packed-weights file of a clustered model (manifest role "weights"), else None."""
    return model_file(model_dir, manifest, "weights") if "weights" in manifest.get("roles", {}) else None


class SentenceEncoder:
    """Owns one ORT session; encodes batches of texts into unit vectors."""

    def __init__(self, model_dir: Path, max_length: int = 256, threads: int = 2, onnx_name: str | None = None):
        self.model_dir = Path(model_dir)
        self.manifest = load_verified_manifest(self.model_dir)
        onnx_path = self.model_dir / onnx_name if onnx_name else model_file(self.model_dir, self.manifest, "onnx")
        self.tokenizer = load_tokenizer(model_file(self.model_dir, self.manifest, "tokenizer"))
        self.tokenizer.enable_truncation(max_length)
        weights = packed_weights_file(self.model_dir, self.manifest)
        self.session = make_session(onnx_path, threads, weights)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._check_signature(onnx_path)
        self.sha256 = model_fingerprint(self.manifest, onnx_path, weights)

    def _check_signature(self, onnx_path: Path) -> None:
        """Token ids in, [batch, sequence, dim] hidden states out: another model's ONNX (the reader's,
        say) in the retriever directory is refused here, not with a traceback at the first question."""
        shape = self.session.get_outputs()[0].shape
        if ("input_ids" not in self.input_names or len(shape) != 3
                or (isinstance(shape[2], int) and shape[2] != self.dim)):
            raise ModelError(f"{onnx_path} is not a sentence encoder (inputs {sorted(self.input_names)}, first output "
                             f"shape {shape}, expected [batch, sequence, {self.dim}]); check paths.retriever_model")

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
