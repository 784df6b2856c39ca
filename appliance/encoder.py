"""Sentence encoder for dense retrieval: int8 all-MiniLM-L6-v2 on onnxruntime.

Mean pooling over real tokens and L2 normalisation, as sentence-transformers does, so inner
product equals cosine similarity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.config import RetrieverConfig
from appliance.errors import ModelError
from appliance.model_dir import ModelDir
from appliance.windows import load_tokenizer


class SentenceEncoder:
    """Owns one ORT session; encodes batches of texts into unit vectors. Token limit and threads
    come from the retriever's config section (``retriever.max_length``, ``retriever.threads``)."""

    def __init__(self, model: ModelDir | Path, config: RetrieverConfig, onnx_name: str | None = None):
        self.files = ModelDir.open(model)  # the verified model directory
        self.model_dir, self.manifest = self.files.path, self.files.manifest
        self.tokenizer = load_tokenizer(self.files.file("tokenizer"))
        self.tokenizer.enable_truncation(config.max_length)
        self.session = self.files.session(config.threads, onnx_name)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._check_signature(self.files.onnx(onnx_name))
        self.sha256 = self.files.fingerprint(onnx_name)

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
