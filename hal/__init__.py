"""hal: one interface to compile, run and profile models on whatever accelerator is here.

``import hal`` imports no framework; backends import theirs lazily.
"""

from .api import BackendStatus, HAL_VERSION as __version__, backends, compile, devices, load, resolve
from .backend import Backend
from .errors import (ArtifactError, CompileError, DeviceUnavailableError, HalError,
                     InvalidInputError, ModelFormatError, NoConversionPath, UnsupportedError,
                     UsageError)
from .executable import Executable, ExecutableInfo
from .hookspecs import hookimpl
from .plugins import load as load_plugins, registry
from .profile import LayerTime, Profile
from .types import PRECISIONS, CompileOptions, Device, Requirements, TensorSpec


def plugins():
    """Every plugin found, loaded or not, with its error."""
    return registry().plugins


__all__ = [
    "ArtifactError", "Backend", "BackendStatus", "CompileError", "CompileOptions", "Device",
    "DeviceUnavailableError", "Executable", "ExecutableInfo", "HalError", "InvalidInputError",
    "LayerTime", "ModelFormatError", "NoConversionPath", "PRECISIONS", "Profile", "Requirements",
    "TensorSpec", "UnsupportedError", "UsageError", "backends", "compile", "devices", "hookimpl",
    "load", "load_plugins", "plugins", "registry", "resolve",
]
