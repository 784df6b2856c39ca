"""The box's ONNX models share 2 cores with each other and with speech: a session that has
finished its run must not go on burning CPU (onnxruntime's pool threads spin by default)."""
from __future__ import annotations

import time

import numpy as np

from appliance.config import Config
from appliance.model_dir import ModelDir


def test_a_session_burns_no_cpu_once_its_run_is_done():
    config = Config()
    session = ModelDir.open(config.resolve(config.paths.reader_model)).session(2)
    feeds = {"input_ids": np.full((1, 128), 2000, np.int64), "attention_mask": np.ones((1, 128), np.int64),
             "token_type_ids": np.zeros((1, 128), np.int64)}
    session.run(None, feeds)
    busy = time.process_time()
    time.sleep(0.3)
    idle_cpu_ms = (time.process_time() - busy) * 1000
    assert idle_cpu_ms < 15, f"{idle_cpu_ms:.1f} ms of CPU while idle (spinning pools burn ~50 ms)"
