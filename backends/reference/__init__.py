"""The reference CPU backend: PyTorch eager on the host, and hal's oracle.

Registered through the ``hal`` entry-point group like any third-party plugin.
"""

from hal.plugin import hookimpl


@hookimpl
def register_backends(register):
    from .backend import ReferenceBackend

    register(ReferenceBackend())
