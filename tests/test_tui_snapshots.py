"""Snapshot tests of the UI's main states at 80×24 (update with --snapshot-update after a
deliberate UI change, and look at the SVGs before committing them)."""
from __future__ import annotations

import pytest

from appliance.tui import ApplianceTUI, LocalBackend


@pytest.fixture(scope="module")
def backend(pipeline):
    return LocalBackend(pipeline)


def test_start_screen(snap_compare, backend):
    assert snap_compare(ApplianceTUI(backend=backend), terminal_size=(80, 24))


def test_help_screen(snap_compare, backend):
    assert snap_compare(ApplianceTUI(backend=backend), terminal_size=(80, 24), press=["f1"])


def test_browsing_a_section(snap_compare, backend):
    async def open_first_section(pilot):
        tree = pilot.app.query_one("#kb")
        tree.focus()
        await pilot.press("home", "space", "down", "enter")
        await pilot.pause()

    assert snap_compare(ApplianceTUI(backend=backend), terminal_size=(80, 24), run_before=open_first_section)
