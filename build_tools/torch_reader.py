"""The runtime Reader's windowing and span decoding around a PyTorch checkpoint: the fp32
baseline that evaluations (report) and benchmarks compare the ONNX readers with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.config import ReaderConfig
from appliance.reader import Reader


class TorchReader(Reader):
    """A Reader whose model call is a PyTorch checkpoint (save_pretrained or a compress command's);
    windowing and threads from the same config section as the runtime reader's."""

    def __init__(self, checkpoint: Path, config: ReaderConfig):
        import torch

        from appliance.windows import load_tokenizer
        from build_tools.compress.common import load_model

        torch.set_num_threads(config.threads)
        self.torch = torch
        self.model = load_model(Path(checkpoint), "reader", attn="sdpa")
        self.tokenizer = load_tokenizer(Path(checkpoint) / "tokenizer.json")
        self.use_settings(config)

    def _run(self, windows):
        width = max(len(w) for w in windows)
        ids = np.zeros((len(windows), width), dtype=np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, w in enumerate(windows):
            ids[row, : len(w)], types[row, : len(w)], mask[row, : len(w)] = w.input_ids, w.token_type_ids, 1
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.from_numpy(ids), attention_mask=self.torch.from_numpy(mask),
                             token_type_ids=self.torch.from_numpy(types))
        return out.start_logits.numpy(), out.end_logits.numpy()
