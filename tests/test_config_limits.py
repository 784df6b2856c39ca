"""Configuration values are range- and type-checked at load: a clear error naming the key (exit 2),
never a traceback or a silently odd box. Model manifests with a wrong schema are exit 3."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, run_cli

from appliance.config import LIMITS, Config, load_config
from appliance.errors import ConfigError, ModelError


def load(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize("text, key", [
    ("[retriever]\ntop_k = -1\n", "retriever.top_k"),
    ("[retriever]\ntop_k = 0\n", "retriever.top_k"),
    ("[retriever]\ntop_k = true\n", "retriever.top_k"),
    ("[reader]\nthreshold = 5\n", "reader.threshold"),
    ("[reader]\nthreshold = nan\n", "reader.threshold"),
    ("[reader]\nmax_length = 1000000000\n", "reader.max_length"),
    ("[reader]\nmax_length = 1e9\n", "reader.max_length"),
    ("[reader]\nstride = 256\n", "reader.stride"),
    ("[reader]\nmax_length = 128\nstride = 96\n", "reader.stride"),
    ("[ask]\nmax_question_tokens = 200\n", "reader.stride"),
    ("[retriever]\nmode = 'semantic'\n", "retriever.mode"),
    ("[retriever]\nfusion = 'linear'\n", "retriever.fusion"),
    ("[retriever]\nconvex_dense_share = 1.5\n", "retriever.convex_dense_share"),
    ("[retriever]\nsentence_count_penalty = -0.1\n", "retriever.sentence_count_penalty"),
    ("[paths]\nkb = 5\n", "paths.kb"),
    ("[paths]\nindex = ''\n", "paths.index"),
    ("[ingest]\nmax_passage_words = 0\n", "ingest.max_passage_words"),
    ("[speech]\nlisten = 'never'\n", "speech.listen"),
    ("[speech]\ntts = 'sam'\n", "speech.tts"),
    ("[api]\nmax_line_bytes = -5\n", "api.max_line_bytes"),
    ("[wyoming]\nmax_clients = 0\n", "wyoming.max_clients"),
    ("[wyoming]\nmax_text_chars = -1\n", "wyoming.max_text_chars"),
])
def test_out_of_range_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, text)


def test_every_limit_accepts_its_default_and_refuses_values_above_it(tmp_path):
    assert load(tmp_path, "") == Config()
    for key, allowed in LIMITS.items():
        section, name = key.split(".")
        if isinstance(allowed[0], str):
            for choice in allowed:
                load(tmp_path, f"[{section}]\n{name} = {json.dumps(choice)}\n")
            continue
        default = getattr(getattr(Config(), section), name)
        assert allowed[0] <= default <= allowed[1], key
        too_big = allowed[1] * 2 + 1
        with pytest.raises(ConfigError, match=key):
            load(tmp_path, f"[{section}]\n{name} = {too_big!r}\n")


@pytest.mark.parametrize("text, key", [
    ("[retriever]\ntop_k = -1\n", "retriever.top_k"),
    ("[paths]\nkb = 5\n", "paths.kb"),
    ("[ingest]\nmax_passage_words = 0\n", "ingest.max_passage_words"),
    ("[reader]\nstride = 300\n", "reader.stride"),
])
def test_cli_exits_2_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in (["ask", "how do I clean the filter?"], ["index", "--index", str(tmp_path / "ix")]):
        result = run_cli("appliance", *command, "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert key in result.stderr and "Traceback" not in result.stderr


def copy_model(tmp_path, name: str):
    target = tmp_path / name
    shutil.copytree(ROOT / "models" / name, target)
    return target


@pytest.mark.parametrize("files", [["model.onnx"], "model.onnx", {"model.onnx": 5}, {"model.onnx": {"bytes": "x"}}])
def test_manifest_schema_errors_are_model_errors(tmp_path, files):
    from appliance.model_dir import load_verified_manifest

    model = copy_model(tmp_path, "retriever")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"] = files
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="manifest"):
        load_verified_manifest(model)


def test_manifest_files_as_a_list_exits_3(tmp_path):
    model = copy_model(tmp_path, "retriever")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"] = list(manifest["files"])
    (model / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "c.toml"
    config.write_text(f"[paths]\nretriever_model = {json.dumps(str(model))}\n")
    result = run_cli("appliance", "index", "--config", str(config), "--index", str(tmp_path / "ix"))
    assert result.returncode == 3, result.stderr
    assert "manifest" in result.stderr and "Traceback" not in result.stderr


def test_retriever_directory_holding_the_reader_model_exits_3(tmp_path):
    """Another model's ONNX with a valid manifest: refused at load, not a traceback at first use."""
    reader = copy_model(tmp_path, "reader")
    config = tmp_path / "c.toml"
    config.write_text(f"[paths]\nretriever_model = {json.dumps(str(reader))}\n")
    result = run_cli("appliance", "index", "--config", str(config), "--index", str(tmp_path / "ix"))
    assert result.returncode == 3, result.stderr
    assert "not a sentence encoder" in result.stderr and "Traceback" not in result.stderr
