"""Backend options: declared by the plugin, checked by the core, never taken on trust.

A backend declares each ``options={...}`` key it understands as an :class:`Option`
(what it does, its type, its range or choices, or a check for a structured
value). The core checks a caller's options at compile, and the options an
artifact records at load, against that one declaration: a value read from a
file reaches a runtime only if the same value typed by the user would have.
It is an allow-list: a key or value the declaration does not admit is refused,
never filtered by a list of known-bad names (a nested property slips past those).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UsageError, brief

#: the JSON scalar types; an undeclared type admits only these (never a list or dict)
SCALARS: tuple[type, ...] = (bool, int, float, str)
#: longest string value an option may hold
MAX_TEXT = 256


def host_cores() -> int:
    """CPUs this process may run on: the bound for every thread-count option."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: the threads a runtime's own pool gets in this process (see :func:`host_threads`)
ENV_THREADS = "HAL_THREADS"


def host_threads() -> int:
    """The threads a runtime with its own thread pool should use in this process,
    unless the caller's options say otherwise: ``$HAL_THREADS`` when it holds a
    positive integer, else :func:`host_cores`; never more than ``host_cores()``.

    A conformance worker that shares the host with other workers (``--jobs``
    above 1) gets its share of the cores here, as it does in ``OMP_NUM_THREADS``
    and ``MKL_NUM_THREADS``; an unset, empty or malformed value means the whole
    host. :func:`host_cores` stays the bound a thread-count option is checked
    against: a caller may ask for more than a worker's share."""
    cores = host_cores()
    raw = os.environ.get(ENV_THREADS, "").strip()
    if raw.isascii() and raw.isdigit() and int(raw) >= 1:
        return min(int(raw), cores)
    return cores


@dataclass(frozen=True)
class Option:
    """One backend option. ``max`` may be a callable read when checking (e.g.
    :func:`host_cores`); ``check`` returns why a structured value is wrong, or None
    (a check that raises refuses the value, with the exception named).

    A value the declaration does not admit is one :class:`~hal.errors.UsageError`
    from ``hal.compile`` (exit 2 at the CLI) before the backend's ``compile`` runs,
    and one :class:`~hal.errors.ArtifactError` from ``hal.load`` when an artifact
    records it, before the backend's ``load`` runs; each names the key, why, and
    the option's ``help`` as the fix."""

    help: str
    type: type | tuple[type, ...] = SCALARS
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | Callable[[], float] | None = None
    check: Callable[[Any], str | None] | None = None

    def why_not(self, value: Any) -> str | None:
        """Why ``value`` is not admitted, or None."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types:
            types += (int,)
        if isinstance(value, bool) and bool not in types:
            return f"is {value!r}, not a {_names(types)}"
        if not isinstance(value, types):
            return f"is a {type(value).__name__}, not a {_names(types)}"
        if isinstance(value, str) and (len(value) > MAX_TEXT or not value.isprintable()):
            return f"is a string of {len(value)} characters with unprintable ones or too long"
        if self.choices and value not in self.choices:
            return f"is {_show(value)}, not one of {', '.join(map(repr, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hi = self.max() if callable(self.max) else self.max
            if value != value or (self.min is not None and value < self.min) or \
                    (hi is not None and value > hi):
                return f"is {value!r}, outside {_range(self.min, hi)}"
        if self.check is not None:
            try:
                return self.check(value)
            except Exception as e:  # noqa: BLE001 - a check that raises refuses, as one hal error
                return f"is refused by its check ({brief(e, 120, typed=True)})"
        return None


def declared(spec: str | Option) -> Option:
    """A plain help string (the older declaration) admits JSON scalars only."""
    return spec if isinstance(spec, Option) else Option(help=str(spec))


def check(backend: str, declarations: dict[str, str | Option], options: Any) -> None:
    """Refuse any key not declared and any value its declaration does not admit."""
    if not isinstance(options, dict):
        raise UsageError(f"options is a {type(options).__name__}, not a dict",
                         "pass options={'name': value, ...} (see the backend's docs)")
    unknown = sorted(_show(k) for k in options if k not in declarations)
    if unknown:
        known = "; ".join(f"{k}: {declared(v).help}" for k, v in declarations.items())
        raise UsageError(f"backend {backend} has no option(s) {', '.join(unknown)}",
                         f"use only {known}" if known else f"pass no options to {backend}")
    for k, v in options.items():
        why = declared(declarations[k]).why_not(v)
        if why:
            raise UsageError(f"{backend} option {k} {why}",
                             f"{k}: {declared(declarations[k]).help}")


def mapping(allowed: dict[str, Option], what: str,
            reserved: dict[str, str] | None = None) -> Callable[[Any], str | None]:
    """A ``check`` for a dict option whose keys and values are themselves
    allow-listed (e.g. OpenVINO properties): one level, scalar values only.
    ``reserved`` names keys hal sets itself, with how the user chooses them."""
    def why_not(value: dict) -> str | None:
        for k, v in value.items():
            if k in (reserved or {}):
                return f"sets {what} {k}, which hal controls ({reserved[k]})"
            if k not in allowed:
                return f"sets {what} {_show(k)}, which hal does not pass on"
            why = allowed[k].why_not(v)
            if why:
                return f"sets {what} {k}, which {why}"
        return None
    return why_not


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _range(lo, hi) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _show(v: Any) -> str:
    """A value from a file, shown safely: bounded, control characters escaped."""
    return repr(v)[:60] if not isinstance(v, str) else ascii(v[:60])
