"""Errors the appliance reports to people: each says what is wrong and what to do."""
from __future__ import annotations

import errno


class ApplianceError(Exception):
    """Base class: the CLI prints the message and exits non-zero, never a traceback."""

    exit_code = 1


class BadQuestionError(ApplianceError):
    exit_code = 2


class ConfigError(ApplianceError):
    exit_code = 2


class ModelError(ApplianceError):
    """A model file is missing, truncated or not the one its manifest names."""

    exit_code = 3


class IndexMissingError(ApplianceError):
    exit_code = 4


class IngestError(ApplianceError):
    """One knowledge-base file could not be read; indexing skips it and goes on."""


class StorageError(ApplianceError):
    """The index cannot be written (disk full, read-only or no permission); the previous index is kept."""

    exit_code = 5


# The disk refused a write: an index build fails as a whole and commits nothing (an optional step
# that fails for another reason, such as espeak-ng missing, is skipped with a warning instead).
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def is_fatal(exc: BaseException) -> bool:
    """Exceptions a front end must let through (Ctrl-C, exit, task cancellation). Everything else,
    including a native library's panic (a BaseException), becomes an error reply."""
    import asyncio

    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError))
