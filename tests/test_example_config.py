from conftest import ROOT

from appliance.config import Config, load_config


def test_example_config_documents_exactly_the_defaults():
    assert load_config(ROOT / "appliance.example.toml") == Config()
