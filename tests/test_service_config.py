from pathlib import Path

from appliance.config import load_config
from conftest import ROOT


def test_service_config_is_valid_and_uses_the_state_and_runtime_directories():
    config = load_config(ROOT / "systemd" / "appliance.toml")
    assert config.paths.index == Path("/var/lib/appliance/index")
    assert config.api.socket == Path("/run/appliance/appliance.sock")
