"""Cloud TPU backend: TensorFlow/XLA on a TPU, or the same XLA program on XLA:CPU.

Registered through the ``hal`` entry-point group. Importing this module imports
no framework; TensorFlow is imported inside probe/compile/load, and only when
a TPU (or the emulator) is actually used.
"""

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_backends(register):
    from .backend import TpuBackend

    register(TpuBackend())
