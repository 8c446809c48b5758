"""hal plugin module: only registers the backend (no runtime import here)."""

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_backends(register):
    from .backend import ExampleBackend

    register(ExampleBackend())
