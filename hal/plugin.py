"""The door for plugin authors: what a backend, format or converter is built from.

A plugin module implements hooks from :mod:`hal.hookspecs` with ``@hookimpl``,
declares the plugin API it was written for (``HAL_PLUGIN_API = 2``, a number:
:data:`API_VERSION` is the one this hal speaks) and is listed under the ``hal``
entry-point group. A plugin imports from ``hal`` (the application's door: the
errors, ``Device``, ``LayerTime``) and from here, nothing else of hal's: the
built-in backends are held to that (tests/test_plugins.py). Application code
never needs this module; it uses :mod:`hal`.

What is here (``__all__``, sorted):

- the contract: ``Backend`` (a backend), ``Runner`` (what ``compile``/``load``
  return; the core wraps it in ``hal.Executable``), ``ExecutableInfo``,
  ``TensorSpec``, ``CompileOptions``, ``Model``, ``Format``, ``Converter``,
  ``Option`` (a declared backend option), ``Placement`` and ``OpPlacement``
  (where each op runs), ``hookimpl`` (the hook marker), ``API_VERSION``;
- discovery: ``discover``, ``registry``, ``Registry``, ``PluginInfo``, ``resolve``
  (a target string to a backend and device);
- options and the host: ``check_options`` (check values against declarations),
  ``mapping`` (an ``Option.check`` for an allow-listed dict), ``host_cores`` (the
  bound of a thread option), ``host_threads`` (the threads a runtime's own pool
  uses here), ``host_memory_bytes``, ``runtime_cache_dir`` (where a runtime may
  cache at ``load``);
- inputs, outputs and files: ``conform`` and ``as_numpy`` (what ``infer``
  receives), ``read_json_object`` (a backend's own JSON in an artifact),
  ``load_npz`` (arrays from an untrusted file), ``inside`` and ``require_inside``
  (paths that must stay in a folder), ``scratch_dir`` (a temp dir that lives as
  long as the compile);
- models: ``export_static`` and ``torch_example_args`` (``torch.export`` at the
  example inputs' shapes), ``export_free_batch`` and ``batch_is_free`` (an export whose
  batch stays free, and the test of one), ``program_module``, ``positional`` and ``example_leaves``
  (an exported program called with one tensor per user input, keyword inputs
  included, and its example inputs in that order), ``program_dim`` (a program's
  dimension: an int, or None where it is free), ``read_pt2`` (a ``.pt2`` proven
  to unpickle nothing), ``onnx_quantized_ops`` (an ONNX graph's quantized ops);
- packages: ``missing``, ``require``, ``install_hint``, ``installed_version``;
- errors and stages: ``brief`` and ``printable`` (one bounded, printable line of
  an exception or a string), ``stage`` and ``STAGES`` (tag where a step failed).
"""

from .api import resolve
from .backend import Backend, host_memory_bytes
from .cache import runtime_dir as runtime_cache_dir
from .errors import STAGES, brief, printable, stage
from .executable import ExecutableInfo, Runner, as_numpy, conform, read_json_object
from .formats import Converter, Format, Model, scratch_dir
from .formats.torchexport import (batch_is_free, example_leaves, export_free_batch, export_static,
                                  positional, program_dim, program_module, torch_example_args)
from .formats.onnxcheck import quantized_ops as onnx_quantized_ops
from .formats.pt2 import read as read_pt2
from .hookspecs import hookimpl
from .npyfile import load_npz
from .options import Option, check as check_options, host_cores, host_threads, mapping
from .packages import install_hint, installed_version, missing, require
from .paths import inside, require_inside
from .placement import OpPlacement, Placement
from .plugins import API_VERSION, PluginInfo, Registry, discover, registry
from .types import CompileOptions, TensorSpec

__all__ = [
    "API_VERSION", "Backend", "CompileOptions", "Converter", "ExecutableInfo", "Format", "Model",
    "OpPlacement", "Option", "Placement", "PluginInfo", "Registry", "Runner", "STAGES", "TensorSpec",
    "as_numpy", "batch_is_free", "brief", "check_options", "conform", "discover", "example_leaves",
    "export_free_batch", "export_static", "hookimpl", "host_cores", "host_memory_bytes", "host_threads", "inside",
    "install_hint", "installed_version", "load_npz", "mapping", "missing", "onnx_quantized_ops",
    "positional", "printable", "program_dim", "program_module", "read_json_object", "read_pt2", "registry",
    "require", "require_inside", "resolve", "runtime_cache_dir", "scratch_dir", "stage",
    "torch_example_args",
]
