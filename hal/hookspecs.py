"""The hooks a hal plugin may implement.

A plugin is any module or object listed under the ``hal`` entry-point group
(``[project.entry-points.hal]``); the built-in backends use exactly that path.
Hooks are called once per process, when plugins are first discovered
(``hal.plugin.registry()``), in this order: formats, converters, backends;
``register_commands`` only when the ``hal`` command line starts. Each hook
receives a callable to register with, so a plugin registers any number of
things, or none, and never imports a framework while doing it.

A plugin module also declares the plugin API it was written for
(``HAL_PLUGIN_API = 2``; see :data:`hal.plugin.API_VERSION`). Discovery
refuses a plugin that declares another, or that implements (``@hookimpl``) a
function whose name is not one of the hooks below: a misspelled hook would
otherwise never be called. ``hal plugins`` lists each with the reason.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hal")
hookimpl = pluggy.HookimplMarker("hal")


@hookspec
def register_formats(register):
    """Register model formats: call ``register(fmt)`` with a
    :class:`hal.plugin.Format` so that paths and in-memory objects of that kind
    are recognised. Runs first."""


@hookspec
def register_converters(register):
    """Register format converters: call ``register(conv)`` with a
    :class:`hal.plugin.Converter`; the planner chains them to reach a format a
    backend accepts."""


@hookspec
def register_backends(register):
    """Register backends: call ``register(backend)`` with a
    :class:`hal.plugin.Backend` instance for each backend this plugin provides.
    Must not import the backend's runtime; do that lazily in ``probe``/``compile``."""


@hookspec
def register_commands(cli):
    """Add commands to the ``hal`` command line: ``cli`` is hal's ``typer.Typer``
    app, so ``@cli.command()`` and ``cli.add_typer(sub, name=...)`` work. Called
    only when the CLI starts; import heavy modules inside the commands."""
