"""Models are verified against their manifest before anything is loaded."""
from __future__ import annotations

import json
import shutil

import pytest

from appliance.artifacts import load_verified_manifest
from appliance.config import Config
from appliance.errors import ModelError


@pytest.fixture
def model_copy(tmp_path):
    src = Config().resolve(Config().paths.reader_model)
    dst = tmp_path / "reader"
    shutil.copytree(src, dst)
    return dst


def test_shipped_models_verify():
    config = Config()
    for path in (config.paths.reader_model, config.paths.retriever_model):
        manifest = load_verified_manifest(config.resolve(path))
        assert manifest["rebuild"].startswith("python -m build_tools")
        assert set(manifest["roles"]) >= {"onnx", "tokenizer"}


def test_missing_file_names_it_and_the_rebuild_command(model_copy):
    (model_copy / "model.int8.onnx").unlink()
    with pytest.raises(ModelError, match=r"missing: .*model\.int8\.onnx.*python -m build_tools"):
        load_verified_manifest(model_copy)


def test_truncated_file_is_detected(model_copy):
    path = model_copy / "model.int8.onnx"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(ModelError, match=r"truncated.*model\.int8\.onnx"):
        load_verified_manifest(model_copy)


def test_same_size_corruption_is_detected_by_sha256(model_copy):
    path = model_copy / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 mismatch.*tokenizer\.json"):
        load_verified_manifest(model_copy)


def test_missing_or_broken_manifest(model_copy):
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        load_verified_manifest(model_copy)
    (model_copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match="manifest missing"):
        load_verified_manifest(model_copy)


def test_manifests_record_provenance_and_metrics():
    config = Config()
    reader = json.loads((config.resolve(config.paths.reader_model) / "manifest.json").read_text())
    assert "parity_vs_pytorch" in reader and "command" in reader and "source" in reader
    retriever = json.loads((config.resolve(config.paths.retriever_model) / "manifest.json").read_text())
    assert retriever["parity_vs_pytorch"]["int8"]["min_cosine"] > 0.95
