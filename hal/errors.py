"""One error family: every message names what was wrong and what to do.

The CLI prints ``str(err)`` on one line and exits with ``err.exit_code``
(2 for usage errors, 1 for failures); no traceback unless ``--debug``.
"""

from __future__ import annotations

from contextlib import contextmanager


def brief(e: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first line of an exception's message, bounded, so that a wrapped
    toolchain error keeps hal's errors one line. ``typed`` prefixes the type;
    an empty message becomes the type's name."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if typed or not first:
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return first[:limit]


def printable(text: str, limit: int | None = None) -> str:
    """``text`` as one printable line: control characters (newlines, escape
    sequences) escaped, so that a file name or a string from a model cannot
    forge lines or colours in what hal prints."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return text if limit is None or len(text) <= limit else text[:limit] + "…"


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


class ResourceError(HalError):
    """The host ran out of memory building or running a model (a ``MemoryError``
    anywhere in hal or a runtime): one error naming what was being done."""


def out_of_memory(doing: str) -> ResourceError:
    return ResourceError(f"the host ran out of memory {doing}",
                         "check the model and inputs for unexpectedly large sizes (a crafted file can "
                         "declare terabytes), use smaller batches, or free memory")


class ArtifactError(HalError):
    """A saved .hal artifact is missing, truncated, edited, or from an unknown
    backend: the file the caller passed is unusable, so it is an input error."""

    exit_code = 2


#: where in building and checking an executable something can go wrong, in order
STAGES = ("export", "convert", "quantize", "compile", "save-reload", "run", "compare")


@contextmanager
def stage(name: str):
    """Tag any exception raised inside with the stage it came from (``err.hal_stage``),
    unless an inner stage already did: the conformance suite reports where a cell
    broke, and a backend marks its own steps (``with stage("quantize"): ...``)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")
    try:
        yield
    except Exception as e:
        if getattr(e, "hal_stage", None) is None:
            try:
                e.hal_stage = name  # type: ignore[attr-defined]
            except AttributeError:  # an exception type with __slots__
                pass
        raise


def stage_of(e: BaseException, default: str | None = None) -> str | None:
    """The stage an exception was tagged with by :func:`stage`, else ``default``."""
    return getattr(e, "hal_stage", None) or default
