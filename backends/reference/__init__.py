"""The reference CPU backend: PyTorch eager on the host, and hal's oracle.

Registered through the ``hal`` entry-point group like any third-party plugin.
"""

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_backends(register):
    from .backend import ReferenceBackend

    register(ReferenceBackend())
