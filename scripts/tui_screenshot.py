"""Save docs/tui-answer.svg: the TUI's answer card at 80×24, for the README."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from appliance.tui import ApplianceTUI, QuestionInput

QUESTION = "how long does the quick program take on the dishwasher?"


async def main(out: Path) -> None:
    app = ApplianceTUI()
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.query_one(QuestionInput).value = QUESTION
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.save_screenshot(str(out.name), str(out.parent))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/tui-answer.svg")))
