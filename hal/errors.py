"""One error family: every message names what was wrong and what to do.

The CLI prints ``str(err)`` on one line and exits with ``err.exit_code``
(2 for usage errors, 1 for failures); no traceback unless ``--debug``.
"""

from __future__ import annotations


class HalError(Exception):
    """Base class. ``what`` says what went wrong, ``fix`` what to do about it."""

    exit_code = 1

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip(".")
        self.fix = fix
        super().__init__(self.what + (f". Fix: {fix}" if fix else ""))


class UsageError(HalError):
    """The caller asked for something invalid (bad target, precision, option)."""

    exit_code = 2


class InvalidInputError(UsageError):
    """Run-time inputs do not match the executable (count, shape, dtype, NaN)."""


class ModelFormatError(UsageError):
    """A model file or object is empty, truncated, unknown or unsafe (a pickle)."""


class UnsupportedError(HalError):
    """The backend cannot honour the request (precision, format, op). Never a fallback."""


class NoConversionPath(UnsupportedError):
    """No chain of installed converters reaches a format the backend accepts."""


class DeviceUnavailableError(HalError):
    """The device is absent, its runtime is missing, or it vanished."""


class CompileError(HalError):
    """The backend's toolchain failed while compiling."""


class ArtifactError(HalError):
    """A saved .hal artifact is missing, truncated or from an unknown backend."""
