"""hal: one interface to compile, run and profile models on whatever accelerator is here.

This module is the door for application code: ``compile``, ``load``,
``devices``, ``backends`` and the nouns they return. Plugin authors import
what they need to write a backend from :mod:`hal.plugin`.

``import hal`` imports no framework; backends import theirs lazily.
"""

from .api import HAL_VERSION as __version__  # noqa: F401
from .api import BackendStatus, backends, compile, devices, load
from .errors import (ArtifactError, CompileError, DeviceUnavailableError, HalError,
                     InvalidInputError, ModelFormatError, NoConversionPath, ResourceError,
                     UnsupportedError, UsageError)
from .executable import Executable
from .profile import LayerTime, Profile
from .types import PRECISIONS, Device, Requirements

__all__ = [
    "ArtifactError", "BackendStatus", "CompileError", "Device", "DeviceUnavailableError",
    "Executable", "HalError", "InvalidInputError", "LayerTime", "ModelFormatError",
    "NoConversionPath", "PRECISIONS", "Profile", "Requirements", "ResourceError", "UnsupportedError",
    "UsageError",
    "backends", "compile", "devices", "load",
]
