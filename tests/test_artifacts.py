"""Models are verified against their manifest before anything is loaded."""
from __future__ import annotations

import json
import shutil

import pytest

from appliance.model_dir import load_verified_manifest
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


def shipped_metrics(manifest: dict, data_prefix: str) -> dict:
    """The recorded evaluation of the manifest's own ONNX file on a data file (evaluate-* --record)."""
    found = [m for key, m in manifest.get("metrics", {}).items()
             if key.startswith(data_prefix) and key.endswith(f"| {manifest['roles']['onnx']}")]
    assert found, f"no --record'ed evaluation of {manifest['roles']['onnx']} on {data_prefix}* in its manifest"
    assert found[0]["command"].startswith("python -m build_tools")
    return found[0]


def test_manifests_record_provenance_and_metrics():
    config = Config()
    reader = json.loads((config.resolve(config.paths.reader_model) / "manifest.json").read_text())
    assert reader["command"].startswith("python -m build_tools") and reader["source"]
    parity = reader["parity_vs_pytorch"]  # keys of the old exporter (max_abs_logit_diff) or of export_model
    max_diff = {label: check.get("max_abs_diff", check.get("max_abs_logit_diff")) for label, check in parity.items()}
    assert parity["int8"]["windows"] >= 100 and max_diff["fp32"] < 1e-3 < max_diff["int8"]
    assert parity["int8"]["argmax_agreement"] >= 0.85 and parity["fp32"]["argmax_agreement"] == 1.0

    squad = shipped_metrics(reader, "dev-v1.1")["always_answer"]["all"]
    assert squad["count"] >= 1000 and 60 <= squad["f1"] <= 100 and squad["exact_match"] <= squad["f1"]
    fp32 = [m["always_answer"]["all"] for key, m in reader["metrics"].items()
            if key.startswith("dev-v1.1") and key.endswith("| model.onnx")]
    if fp32:  # int8 costs at most 2 F1 against the fp32 export on the same questions
        assert fp32[0]["count"] == squad["count"] and squad["f1"] >= fp32[0]["f1"] - 2

    retriever = json.loads((config.resolve(config.paths.retriever_model) / "manifest.json").read_text())
    assert retriever["command"].startswith("python -m build_tools") and retriever["dim"] == 384
    assert retriever["parity_vs_pytorch"]["fp32"]["min_cosine"] > 0.999
    assert retriever["parity_vs_pytorch"]["int8"]["min_cosine"] > 0.95
    recalls = shipped_metrics(retriever, "dev-v1.1")
    assert recalls["questions"] >= 1000
    for ranking in ("dense", "bm25", "fused"):
        r = recalls[ranking]
        assert 0 < r["R@1"] <= r["R@5"] <= r["R@20"] <= 1, ranking
    assert recalls["dense"]["R@5"] >= 0.8 and recalls["fused"]["R@5"] >= max(recalls["dense"]["R@5"],
                                                                            recalls["bm25"]["R@5"]) - 0.01
