"""Is a Python package installed, which version, and what to type to install it.

One place for the question every backend, format and converter asks, so that
each missing runtime is reported the same way: the pip requirement to install,
never a bare module name. Nothing here imports the package it asks about.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version as _dist_version


def missing(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The top-level modules among ``modules`` that cannot be imported (found without importing)."""
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m.split(".")[0]) is None:
                out.append(m)
        except (ImportError, ValueError):  # a broken or half-installed package
            out.append(m)
    return out


def installed_version(*dists: str) -> str | None:
    """Version of the first of ``dists`` that is installed (no import), else None.
    Runtimes ship under several names (tensorflow / tensorflow-cpu / tf-nightly)."""
    for name in dists:
        try:
            return _dist_version(name)
        except PackageNotFoundError:
            continue
    return None


def install_hint(modules: list[str] | tuple[str, ...], extra: str | None = None,
                 install: str | None = None) -> str:
    """What to run to get ``modules``: the plugin's own pip requirement
    (``install``, e.g. ``"hal-npu-plugin[runtime]"``), else hal's extra (a deploy-only
    ``X-runtime`` extra names ``X``, which compiles too), else the
    modules' usual PyPI names (``ai_edge_litert`` → ``ai-edge-litert``)."""
    if install:
        return f"pip install '{install}'"
    if extra:
        hint = f"pip install 'hal-accel[{extra}]'"
        if extra.endswith("-runtime"):  # deploy-only extras: say which one compiles too
            hint += f" to load and run .hal files, 'hal-accel[{extra[:-len('-runtime')]}]' to compile too"
        return hint
    names = sorted({m.split(".")[0].replace("_", "-") for m in modules})
    return "pip install " + " ".join(names) if names else "install the plugin's runtime"


def require(modules: tuple[str, ...] | list[str], what: str, error: type[Exception],
            extra: str | None = None, install: str | None = None) -> None:
    """Raise ``error`` (a hal error class) naming ``what`` needs which of
    ``modules`` and the pip command that installs them, if any is missing."""
    absent = missing(modules)
    if absent:
        raise error(f"{what} needs {', '.join(absent)}, which is not installed",
                    install_hint(absent, extra, install))
