"""Discover plugins in the ``hal`` entry-point group, the way pytest and llm do.

Built-in backends are ordinary entry points; the only default plugin is the
framework-level formats module. ``HAL_PLUGINS=a,b`` (or ``discover(only=...)``)
restricts which entry points are imported. A plugin is checked before its hooks
run: it must declare the plugin API it was written for (``HAL_PLUGIN_API = 2``
in the module its entry point names; :data:`API_VERSION` is the one this hal
speaks) and implement only hooks that exist (:mod:`hal.hookspecs`). A plugin
that fails to import, declares another API, implements a hook hal does not
have, or fails to register is recorded with its error (``hal plugins``) and
the others carry on; one that declares no API is loaded with a warning.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Callable

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import brief, printable
from .formats import Converter, Format

GROUP = "hal"
ENV_ONLY = "HAL_PLUGINS"
DEFAULT_PLUGINS = ("hal.formats.builtin",)

#: The plugin API this hal speaks. A plugin declares the one it was written for as a
#: module-level ``HAL_PLUGIN_API = <int>`` in the module its entry point names (for a
#: ``module:object`` entry point, on the object or else in its module), written as a
#: number, never as ``hal.plugin.API_VERSION``, which would always agree.
#: 1: ``compile``/``load`` returned a ``hal.Executable`` subclass;
#: 2: they return a :class:`hal.plugin.Runner`, which the core wraps in ``hal.Executable``.
API_VERSION = 2
#: the module attribute a plugin declares its API version in
API_ATTR = "HAL_PLUGIN_API"
#: the hooks a plugin may implement (:mod:`hal.hookspecs`)
HOOKS = ("register_formats", "register_converters", "register_backends", "register_commands")


@dataclass
class PluginInfo:
    """One plugin as ``hal plugins`` lists it."""

    #: the entry point's name (or a default plugin's module)
    name: str
    #: what the entry point names (``module`` or ``module:object``), or "default"
    source: str
    #: imported, checked and registered
    loaded: bool = False
    #: why not (an import error, another plugin API, a misspelled hook, a hook that raised)
    error: str | None = None
    backends: list[str] = field(default_factory=list)
    #: the plugin API the plugin declares (``HAL_PLUGIN_API``), None if it declares none
    api: int | None = None
    #: loaded, but something to fix (no ``HAL_PLUGIN_API``; a hook function without ``@hookimpl``)
    warning: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Registry:
    """What the discovered plugins registered."""

    plugins: list[PluginInfo]
    backends: dict[str, Backend]
    formats: dict[str, Format]
    converters: list[Converter]
    #: ``register_commands`` implementations, called when the CLI starts
    commands: list[tuple[PluginInfo | None, Callable[..., None]]] = field(default_factory=list)

    def add_commands(self, cli) -> None:
        """Let every plugin add its commands to ``cli`` (hal's typer app); a plugin
        whose hook fails is recorded and the others carry on."""
        for info, hook in self.commands:
            try:
                hook(cli=cli)
            except Exception as e:  # noqa: BLE001 - a broken plugin must not take the CLI down
                if info is not None:
                    info.loaded, info.error = False, f"register_commands failed: {brief(e, 300, typed=True)}"


_registry: Registry | None = None


def api_check(plugin: object, module: str | None = None) -> tuple[int | None, str | None, str | None]:
    """(declared API, error, warning) for a plugin object, before its hooks run.
    ``module``: the module of a ``module:object`` entry point, read when the object
    itself declares nothing (one declaration serves every object of a module)."""
    try:
        declared = getattr(plugin, API_ATTR, None)
        if declared is None and module is not None:
            declared = getattr(import_module(module), API_ATTR, None)
    except Exception as e:  # noqa: BLE001 - a plugin object whose attribute access raises
        return None, f"reading its {API_ATTR} failed: {brief(e, 200, typed=True)}", None
    if declared is None:
        return None, None, (f"declares no {API_ATTR}: loaded as if written for plugin API {API_VERSION}; "
                            f"once it follows docs/writing-a-backend.md, add `{API_ATTR} = {API_VERSION}` "
                            "to its module")
    if type(declared) is not int:
        return None, (f"its {API_ATTR} is {printable(repr(declared), 40)}, not an int: declare the "
                      f"plugin API it was written for, e.g. `{API_ATTR} = {API_VERSION}`"), None
    if declared == API_VERSION:
        return declared, None, None
    fix = (f"update the plugin to API {API_VERSION} (docs/writing-a-backend.md, \"Plugin API "
           f"versions\"), or use a hal release that speaks API {declared}" if declared < API_VERSION else
           f"upgrade hal (`pip install -U hal-accel`) to one that speaks API {declared}, or install "
           f"a release of the plugin written for API {API_VERSION}")
    return declared, (f"written for hal plugin API {declared} ({API_ATTR} = {declared}); this hal "
                      f"speaks API {API_VERSION}: {fix}"), None


def hook_check(pm: pluggy.PluginManager, plugin: object) -> tuple[str | None, str | None]:
    """(error, warning) for a registered plugin's hooks: an implementation of a hook
    hal does not have (a misspelling that would silently do nothing) is an error;
    a function named like a hook but without ``@hookimpl`` (hal never calls it) is a
    warning. Like pluggy's ``check_pending``, for one plugin."""
    callers = pm.get_hookcallers(plugin) or []
    unknown = sorted(hc.name for hc in callers if not hc.has_spec())
    if unknown:
        return (f"implements {', '.join(unknown)}, which {'is not a hook' if len(unknown) == 1 else 'are not hooks'} "
                f"of hal (misspelled?): the hooks are {', '.join(HOOKS)}"), None
    marked = {hc.name for hc in callers}
    bare = [h for h in HOOKS if h not in marked and callable(getattr(plugin, h, None))]
    if bare:
        return None, (f"defines {', '.join(bare)} without @hookimpl, so hal never calls "
                      f"{'it' if len(bare) == 1 else 'them'}: decorate with hal.plugin.hookimpl")
    return None, None


def _why(e: Exception) -> str:
    """A plugin's error, one line: pluggy's validation errors put the reason on
    their later lines (which argument a hook implementation got wrong)."""
    if isinstance(e, pluggy.PluginValidationError):
        return printable(" ".join(str(e).split()), 300)
    return brief(e, 300, typed=True)


def discover(only: list[str] | None = None) -> Registry:
    """(Re)discover every plugin. ``only`` (or ``$HAL_PLUGINS``) names the entry
    points to import; the rest are listed as disabled."""
    global _registry
    if only is None and os.environ.get(ENV_ONLY):
        only = [p.strip() for p in os.environ[ENV_ONLY].split(",") if p.strip()]
    pm = pluggy.PluginManager("hal")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for mod in DEFAULT_PLUGINS:
        pm.register(import_module(mod), name=mod)
        infos.append(PluginInfo(mod, "default", loaded=True, api=API_VERSION))
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if any(i.name == ep.name for i in infos):
            continue  # the same distribution seen twice on sys.path
        info = PluginInfo(ep.name, ep.value)
        infos.append(info)
        if only is not None and ep.name not in only:
            info.error = f"disabled (not in {ENV_ONLY})"
            continue
        try:
            plugin = ep.load()
            info.api, info.error, info.warning = api_check(plugin, ep.module if ep.attr else None)
            if info.error:
                continue  # another plugin API: none of its hooks runs
            pm.register(plugin, name=ep.name)
            error, warning = hook_check(pm, plugin)
            if error:
                pm.unregister(plugin)
                info.error = error
                continue
            info.warning = "; ".join(w for w in (info.warning, warning) if w) or None
            info.loaded = True
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the rest
            info.error = _why(e)
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]

    by_name = {i.name: i for i in infos}
    backends: dict[str, Backend] = {}
    formats: dict[str, Format] = {}
    converters: list[Converter] = []

    def call(hook: str, sink) -> None:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            info = by_name.get(impl.plugin_name)
            try:
                impl.function(register=lambda obj, _i=info: sink(obj, _i))
            except Exception as e:  # noqa: BLE001
                if info is not None:
                    info.loaded, info.error = False, f"{hook} failed: {brief(e, 300, typed=True)}"

    def add_backend(b: Backend, info: PluginInfo | None) -> None:
        if not isinstance(b, Backend):
            raise TypeError(f"register() got {type(b).__name__}, expected a hal.Backend")
        if b.name in backends:
            raise ValueError(f"backend name {b.name!r} is already registered")
        backends[b.name] = b
        if info is not None:
            info.backends.append(b.name)

    call("register_formats", lambda f, _: formats.__setitem__(f.name, f))
    call("register_converters", lambda c, _: converters.append(c))
    call("register_backends", add_backend)
    commands = [(by_name.get(impl.plugin_name), impl.function)
                for impl in pm.hook.register_commands.get_hookimpls()]
    _registry = Registry(infos, backends, formats, converters, commands)
    return _registry


def registry() -> Registry:
    """The plugins discovered in this process (discovering them on first use)."""
    return _registry if _registry is not None else discover()
