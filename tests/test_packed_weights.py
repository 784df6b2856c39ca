"""Clustered, packed int8 weights: bit packing is lossless, clustering keeps at most k levels per
channel, a packed model computes what its int8 source computes (exactly when the clusters can
hold every level), and a packed graph without its weights refuses to load.

The shipped models in models/ are packed, so every pipeline test also runs them for real."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.model_dir import ort_session as make_session
from appliance.errors import ModelError
from appliance.packed import bits_for, load_packed_weights, pack_indices, unpack_indices
from tests.conftest import DATA, ROOT, run_cli

onnx = pytest.importorskip("onnx")
VOCAB = 30522  # the shipped tokenizer's, so real calibration windows index the table
SMALL_VOCAB = 8000  # enough for TOKENS, when nothing is calibrated: faster to cluster


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_bit_planes_round_trip(bits, channels, length, seed):
    indices = np.random.default_rng(seed).integers(0, 1 << bits, (channels, length)).astype(np.uint8)
    assert np.array_equal(unpack_indices(pack_indices(indices, bits), length), indices)


def test_indices_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        pack_indices(np.array([[16]], dtype=np.uint8), 4)


def test_bits_for_cluster_counts():
    assert [bits_for(k) for k in (2, 3, 4, 8, 9, 16)] == [1, 2, 2, 3, 4, 4]


def clustered(values: np.ndarray, k: int) -> np.ndarray:
    from build_tools.compress.cluster import cluster_channels

    codebook, indices = cluster_channels(values, np.ones((1, values.shape[1])), k, 20)
    return np.take_along_axis(codebook, indices.astype(np.intp), 1)


def test_clustering_keeps_at_most_k_levels_and_is_exact_when_levels_fit():
    rng = np.random.default_rng(0)
    values = np.clip(rng.normal(0, 30, (40, 384)), -127, 127).astype(np.int8)
    errors = {}
    for k in (4, 16):
        result = clustered(values, k)
        assert result.dtype == np.int8 and all(len(np.unique(row)) <= k for row in result)
        errors[k] = np.abs(result.astype(int) - values).mean()
    assert errors[16] < errors[4] < 15
    few = rng.choice(np.array([-90, -3, 0, 7, 55, 120], dtype=np.int8), (10, 64))
    assert np.array_equal(clustered(few, 8), few)
    table = rng.integers(0, 256, (20, 32)).astype(np.uint8)  # embedding tables are uint8
    assert clustered(table, 16).dtype == np.uint8


def tiny_int8_model(path: Path, levels: np.ndarray | None = None, vocab: int = VOCAB) -> None:
    """input_ids -> embedding (Gather) -> MatMul -> Relu -> MatMul -> logits, dynamically quantised to
    int8 the way export-reader does. ``levels``: draw every weight from these few values instead."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(1)

    def weight(shape):
        return (rng.choice(levels, shape) if levels is not None else rng.normal(0, 0.5, shape)).astype(np.float32)

    inits = [numpy_helper.from_array(weight((vocab, 32)), "embeddings"),
             numpy_helper.from_array(weight((32, 64)), "w1"),
             numpy_helper.from_array(weight((64, 2)), "w2")]
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["x"], name="/embeddings/Gather"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="/layer.0/intermediate/dense/MatMul"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="/qa_outputs/MatMul")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, 2])], inits)
    fp32 = path.with_suffix(".fp32.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    quantize_dynamic(str(fp32), str(path), per_channel=True, weight_type=QuantType.QInt8)
    fp32.unlink()


def int8_dir(tmp_path: Path, levels=None, vocab: int = VOCAB) -> Path:
    from build_tools.manifest import write_manifest

    src = tmp_path / "int8"
    src.mkdir()
    tiny_int8_model(src / "model.int8.onnx", levels, vocab)
    shutil.copy(ROOT / "models" / "reader" / "tokenizer.json", src / "tokenizer.json")
    write_manifest(src, roles={"onnx": "model.int8.onnx", "tokenizer": "tokenizer.json"}, rebuild="test", extra={})
    return src


def outputs(session, ids: np.ndarray) -> np.ndarray:
    return session.run(None, {"input_ids": ids})[0]


TOKENS = np.array([[101, 2129, 2146, 2515, 1996, 4248, 2565, 2202, 1029, 102, 1996, 4248, 2565, 102]])


@pytest.mark.slow  # runs `build_tools cluster` in a subprocess (k-means: seconds)
def test_cluster_command_packs_a_model_that_computes_like_its_source(tmp_path):
    src = int8_dir(tmp_path)
    out = tmp_path / "packed"
    done = run_cli("build_tools", "cluster", "--model", str(src), "--out", str(out), "--kind", "reader",
                   "--min-size", "1000", "--calibration", "3", "--calibration-data", str(DATA / "tiny-squad.json"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["roles"]["weights"] == "weights.npz"
    assert manifest["clustering"]["tensors"] == 2  # embeddings and w1; w2 is below --min-size
    packed_bytes = (out / "model.onnx").stat().st_size + (out / "weights.npz").stat().st_size
    # 3-bit rows of 32 values plus an 8-entry codebook each: about 0.6 of the int8 bytes here
    # (with the real 384-wide rows the codebooks matter less: see README, Compression)
    assert packed_bytes < 0.7 * (src / "model.int8.onnx").stat().st_size

    tensors = load_packed_weights(out / "weights.npz")
    table = next(v for k, v in tensors.items() if "embeddings" in k)
    assert table.shape == (VOCAB, 32) and max(len(np.unique(r)) for r in table[:500]) <= 8

    reference = make_session(src / "model.int8.onnx", 1)
    packed = make_session(out / "model.onnx", 1, out / "weights.npz")
    a, b = outputs(reference, TOKENS), outputs(packed, TOKENS)
    assert a.shape == b.shape
    assert 0 < np.abs(a - b).max() < 0.35 * np.abs(a).max()  # lossy (8 and 16 levels), but close


@pytest.mark.slow
def test_packing_is_exact_when_every_channel_fits_in_its_clusters(tmp_path):
    src = int8_dir(tmp_path, levels=np.array([-0.8, -0.1, 0.0, 0.3, 0.9]), vocab=SMALL_VOCAB)
    out = tmp_path / "packed"
    done = run_cli("build_tools", "cluster", "--model", str(src), "--out", str(out), "--min-size", "1000",
                   "--calibration", "0")
    assert done.returncode == 0, done.stderr
    reference = make_session(src / "model.int8.onnx", 1)
    packed = make_session(out / "model.onnx", 1, out / "weights.npz")
    assert np.array_equal(outputs(reference, TOKENS), outputs(packed, TOKENS))


@pytest.mark.slow
def test_packed_graph_without_its_weights_refuses_to_load(tmp_path):
    src = int8_dir(tmp_path, vocab=SMALL_VOCAB)
    out = tmp_path / "packed"
    assert run_cli("build_tools", "cluster", "--model", str(src), "--out", str(out), "--min-size", "1000",
                   "--calibration", "0").returncode == 0
    with pytest.raises(ModelError, match="cannot load"):
        make_session(out / "model.onnx", 1)
    (tmp_path / "not-weights.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ModelError, match="packed weights unreadable"):
        make_session(out / "model.onnx", 1, tmp_path / "not-weights.npz")


def test_cluster_refuses_more_than_sixteen_levels(tmp_path):
    src = int8_dir(tmp_path, vocab=SMALL_VOCAB)
    done = run_cli("build_tools", "cluster", "--model", str(src), "--out", str(tmp_path / "o"), "--clusters", "17")
    assert done.returncode == 2 and "between 2 and 16" in done.stderr
