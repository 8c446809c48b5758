"""hal plugin module: only registers the backend (no runtime import here)."""

from hal.plugin import hookimpl


@hookimpl
def register_backends(register):
    from .backend import ExampleBackend

    register(ExampleBackend())
