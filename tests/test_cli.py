"""`appliance` as a user runs it: a real subprocess, real models, real index on disk.
(That the runtime imports no torch and nothing of the build side: test_layering.py.)"""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from appliance.config import Config

pytestmark = pytest.mark.slow  # every test starts `appliance`, which loads the models


@pytest.fixture(scope="module")
def fresh_index(tmp_path_factory):
    return tmp_path_factory.mktemp("cli") / "index"


def test_ask_builds_missing_index_then_answers_as_json(fresh_index):
    result = run_cli("appliance", "ask", "how long should I preheat the oven for bread?", "--json",
                     "--index", str(fresh_index))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert "20 minutes" in answer["text"] and not answer["abstained"]
    assert answer["source"]["section"][-1] in {"Preheating", "Baking bread"}
    assert (fresh_index / "current" / "manifest.json").is_file()
    assert {"retrieval", "reader", "load"} <= set(answer["timings_ms"])


def test_ask_prints_answer_source_and_confidence(fresh_index):
    result = run_cli("appliance", "ask", "how long does the quick program take on the dishwasher?", "--index",
                     str(fresh_index), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert "Answer:     30 minutes" in result.stdout
    assert "Source:     Brightwash" in result.stdout and "Confidence:" in result.stdout


def test_ask_says_i_dont_know_with_the_closest_section(fresh_index):
    result = run_cli("appliance", "ask", "who won the football world cup in 1998?", "--index", str(fresh_index))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("I don't know.") and "Closest section:" in result.stdout


@pytest.mark.parametrize("question, message", [
    ("", "empty"), ("   \t ", "empty"), ("x" * 501, "limit is 500"), ("\x01\x02", "empty"),
])
def test_bad_questions_exit_2_with_a_message(question, message, fresh_index):
    result = run_cli("appliance", "ask", question, "--index", str(fresh_index))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_kb_and_index(tmp_path):
    result = run_cli("appliance", "ask", "hello?", "--kb", str(tmp_path / "no-kb"), "--index", str(tmp_path / "ix"))
    assert result.returncode == 4 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_names_the_file(tmp_path, fresh_index):
    (tmp_path / "empty-model").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(f'[paths]\nreader_model = "{tmp_path / "empty-model"}"\n')
    result = run_cli("appliance", "ask", "hello?", "--config", str(config), "--index", str(fresh_index))
    assert result.returncode == 3 and "manifest.json" in result.stderr


def test_corrupt_model_names_the_file_and_the_rebuild_command(tmp_path, fresh_index):
    model = tmp_path / "reader"
    shutil.copytree(Config().resolve(Config().paths.reader_model), model)
    with open(model / "model.int8.onnx", "r+b") as fh:
        fh.truncate(1000)
    config = tmp_path / "c.toml"
    config.write_text(f'[paths]\nreader_model = "{model}"\n')
    result = run_cli("appliance", "ask", "hello?", "--config", str(config), "--index", str(fresh_index),
                     env={"APPLIANCE_CONFIG": str(config)})
    assert result.returncode == 3
    assert "model.int8.onnx" in result.stderr and "python -m build_tools" in result.stderr


def test_bad_config_and_bad_top_k(tmp_path, fresh_index):
    config = tmp_path / "bad.toml"
    config.write_text("[reader]\nthreshold = 'high'\n")
    result = run_cli("appliance", "ask", "hello?", "--config", str(config))
    assert result.returncode == 2 and "reader.threshold" in result.stderr
    result = run_cli("appliance", "ask", "hello?", "--top-k", "0", "--index", str(fresh_index))
    assert result.returncode != 0 and "--top-k" in result.stderr


def test_index_command_reports_what_it_indexed_and_skipped(tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "good.md").write_text("# Fan\n\n## Cleaning\n\nDust the fan blades monthly.\n")
    (kb / "bad.xml").write_text("<not closed")
    result = run_cli("appliance", "index", "--kb", str(kb), "--index", str(tmp_path / "index"))
    assert result.returncode == 0, result.stderr
    assert "Indexed 1 documents into 1 passages" in result.stdout
    assert "Skipped 1 file(s)" in result.stdout and "bad.xml" in result.stdout

