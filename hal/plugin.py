"""The door for plugin authors: what a backend, format or converter is built from.

A plugin module implements hooks from :mod:`hal.hookspecs` with ``@hookimpl``
and is listed under the ``hal`` entry-point group. Application code never
needs this module; it uses :mod:`hal`.
"""

from .api import resolve
from .backend import Backend, host_memory_bytes
from .errors import STAGES, stage
from .executable import ExecutableInfo, Runner, as_numpy, conform, read_json_object
from .formats import Converter, Format, Model
from .hookspecs import hookimpl
from .options import Option, host_cores
from .placement import OpPlacement, Placement
from .packages import install_hint, installed_version, missing, require
from .plugins import PluginInfo, Registry, discover, registry
from .types import CompileOptions, TensorSpec

__all__ = [
    "Backend", "CompileOptions", "Converter", "ExecutableInfo", "Format", "Model", "OpPlacement", "Option",
    "Placement", "PluginInfo",
    "Registry", "Runner", "STAGES", "TensorSpec", "as_numpy", "conform", "discover", "hookimpl", "host_cores", "host_memory_bytes", "install_hint",
    "installed_version", "missing", "read_json_object", "registry", "require", "resolve", "stage",
]
