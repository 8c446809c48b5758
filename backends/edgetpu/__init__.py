"""hal backend plugin: Google Coral Edge TPU (full-int8 TFLite via LiteRT + libedgetpu).

Registering imports nothing but the backend class; LiteRT, litert-torch and
TensorFlow are imported only when a model is compiled or loaded.
"""

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_backends(register):
    from .backend import EdgeTpuBackend

    register(EdgeTpuBackend())
