"""Discover plugins in the ``hal`` entry-point group, the way pytest and llm do.

Built-in backends are ordinary entry points; the only default plugin is the
framework-level formats module. ``HAL_PLUGINS=a,b`` (or ``discover(only=...)``)
restricts which entry points are imported; a plugin that fails to import or
register is recorded with its error and the others carry on.
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
from .errors import brief
from .formats import Converter, Format

GROUP = "hal"
ENV_ONLY = "HAL_PLUGINS"
DEFAULT_PLUGINS = ("hal.formats.builtin",)


@dataclass
class PluginInfo:
    name: str
    source: str
    loaded: bool = False
    error: str | None = None
    backends: list[str] = field(default_factory=list)

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
        infos.append(PluginInfo(mod, "default", loaded=True))
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if any(i.name == ep.name for i in infos):
            continue  # the same distribution seen twice on sys.path
        info = PluginInfo(ep.name, ep.value)
        infos.append(info)
        if only is not None and ep.name not in only:
            info.error = f"disabled (not in {ENV_ONLY})"
            continue
        try:
            pm.register(ep.load(), name=ep.name)
            info.loaded = True
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the rest
            info.error = brief(e, 300, typed=True)
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
