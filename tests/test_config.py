from pathlib import Path

import pytest

from appliance.config import Config, load_config
from appliance.errors import ConfigError


def test_no_file_gives_documented_defaults(monkeypatch):
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    config = load_config(None)
    assert config == Config()
    assert config.retriever.mode == "hybrid"
    assert 0 < config.reader.threshold < 1


def test_toml_values_override_defaults(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[retriever]\ntop_k = 3\nmode = "dense"\n[reader]\nthreshold = 1\n[paths]\nkb = "/srv/kb"\n')
    config = load_config(path)
    assert config.retriever.top_k == 3 and config.retriever.mode == "dense"
    assert config.reader.threshold == 1.0 and isinstance(config.reader.threshold, float)
    assert config.paths.kb == Path("/srv/kb") and config.resolve(config.paths.kb) == Path("/srv/kb")


def test_environment_variable_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "env.toml"
    path.write_text("[ask]\nmax_question_chars = 42\n")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(path))
    assert load_config().ask.max_question_chars == 42


@pytest.mark.parametrize("text, message", [
    ("[retriever]\ntopk = 3\n", "unknown config key"),
    ("[retriever]\ntop_k = 'three'\n", "must be int"),
    ("[nonsense]\nx = 1\n", "unknown config key"),
    ("retriever = 5\n", "must be a table"),
    ("[retriever\n", "cannot read config"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
