"""What the build tools report as one line, not a traceback: an input file they cannot read (a
wrong path or a file of another format) is the user's to fix, not a bug to debug."""
from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """An input data file that is missing or not in the format the command reads."""


def read_json(path: str | Path, what: str):
    """The parsed JSON of an input file, or DataError naming the file and what it should be."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {what} ({exc})") from exc


def require_files(paths: list[str], what: str = "training data file") -> None:
    """Before a job starts: a wrong path must fail at once and leave no job folder behind."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: no such {what}")
