"""The hooks a hal plugin may implement.

A plugin is any module or object listed under the ``hal`` entry-point group
(``[project.entry-points.hal]``). The built-in backends use exactly that path.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hal")
hookimpl = pluggy.HookimplMarker("hal")


@hookspec
def register_backends(register):
    """Register backends: call ``register(backend)`` with a :class:`hal.Backend`
    instance for each backend this plugin provides. Must not import the
    backend's runtime; do that lazily in ``probe``/``compile``."""


@hookspec
def register_formats(register):
    """Register model formats: call ``register(fmt)`` with a :class:`hal.formats.Format`
    so that paths and in-memory objects of that kind are recognised."""


@hookspec
def register_converters(register):
    """Register format converters: call ``register(conv)`` with a
    :class:`hal.formats.Converter`; the planner chains them to reach a format a
    backend accepts."""
