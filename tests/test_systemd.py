"""The systemd unit (verified offline by systemd itself) and the daemon's sd_notify behaviour."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

UNIT = ROOT / "systemd" / "appliance.service"
WYOMING_UNIT = ROOT / "systemd" / "appliance-wyoming.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def installed_copy(tmp_path: Path, source: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks it exists)."""
    script = Path(sys.executable).parent / "appliance"
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/appliance/.venv/bin/appliance", str(script)))
    return unit


@needs_systemd
@pytest.mark.parametrize("source", [UNIT, WYOMING_UNIT], ids=["daemon", "wyoming"])
def test_unit_verifies(tmp_path, source):
    result = subprocess.run(["systemd-analyze", "verify", str(installed_copy(tmp_path, source))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@needs_systemd
@pytest.mark.parametrize("source", [UNIT, WYOMING_UNIT], ids=["daemon", "wyoming"])
def test_unit_exposure_score_is_at_most_2(tmp_path, source):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(installed_copy(tmp_path, source))],
                            capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "PrivateNetwork=yes", "ProtectSystem=strict",
                    "ProtectHome=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                    "SystemCallFilter=@system-service", "StateDirectory=appliance", "SupplementaryGroups=audio"):
        assert setting in text, setting


def network_socket_inodes() -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path("/proc/net") / table
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                inodes.add(line.split()[9])
    return inodes


def process_socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def test_daemon_notifies_systemd_and_opens_no_network_socket(tmp_path, kb_index_dir):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "300000"}
    env.pop("APPLIANCE_CONFIG", None)
    api_socket = tmp_path / "api.sock"
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--socket", str(api_socket),
                             "--index", str(kb_index_dir)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        messages = [listener.recv(4096).decode()]
        assert messages[0].startswith("READY=1")
        started = time.time()
        while sum(m == "WATCHDOG=1" for m in messages) < 3:
            messages.append(listener.recv(4096).decode())
        assert time.time() - started < 5
        assert api_socket.exists()
        sockets = process_socket_inodes(proc.pid)
        assert sockets, "the daemon should hold its Unix sockets"
        assert not sockets & network_socket_inodes()
        proc.send_signal(signal.SIGTERM)
        while (message := listener.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
