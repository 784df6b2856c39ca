"""Static and behavioural checks that no input reaches a shell or escapes its root."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

SOURCES = sorted(p for d in ("appliance", "build_tools", "benchmarks") for p in (ROOT / d).rglob("*.py"))
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execlp"), ("os", "spawnl")}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_sources_were_found():
    assert len(SOURCES) > 30


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shell_anywhere(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in calls(tree):
        for keyword in call.keywords:
            if keyword.arg == "shell":
                assert isinstance(keyword.value, ast.Constant) and keyword.value.value is False, \
                    f"{path}:{call.lineno} passes shell=..."
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            assert (func.value.id, func.attr) not in SHELL_CALLS, f"{path}:{call.lineno} calls {func.value.id}.{func.attr}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_subprocess_commands_are_argument_lists(path):
    """A command built as one string would need a shell (or split user text into options)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for call in calls(tree):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "subprocess" \
                and call.args:
            assert not isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)), \
                f"{path}:{call.lineno}: subprocess.{func.attr} with a string command"


@pytest.mark.slow  # synthesises speech
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_text_that_looks_like_options_is_spoken_not_obeyed(tmp_path):
    from appliance.speech.tts import EspeakSynthesizer

    target = tmp_path / "pwned.wav"
    parts = list(EspeakSynthesizer().synthesize(f"-w {target} --version"))
    assert not target.exists()
    assert parts and parts[0].seconds > 1.0  # the words were spoken


def test_kb_outline_and_answers_carry_only_relative_sources(kb_index_dir):
    from appliance.index import load_index

    for passage in load_index(kb_index_dir).passages:
        source = Path(passage.source)
        assert not source.is_absolute() and ".." not in source.parts
