"""The CUDA GPU backend (PyTorch on NVIDIA GPUs), registered through the ``hal``
entry-point group. Importing it imports no framework."""

from hal.plugin import hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_backends(register):
    from .backend import CudaBackend

    register(CudaBackend())
