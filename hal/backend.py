"""The contract a backend plugin implements.

A backend is a small object: what it accepts (formats, precisions), what it
finds (``probe`` → devices), and how it builds (``compile``) and restores
(``load``) a :class:`~hal.plugin.Runner`, which the core wraps in
:class:`hal.Executable`. It imports its runtime lazily so that listing plugins
never pays for, or breaks on, a framework.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DeviceUnavailableError, UnsupportedError
from .executable import ExecutableInfo, Runner
from .formats import Model
from .options import Option, check as check_declared
from .packages import install_hint, installed_version, missing
from .types import CompileOptions, Device, TensorSpec

__all__ = ["Backend", "host_memory_bytes", "installed_version"]


def host_memory_bytes() -> int | None:
    """The host's physical memory (a CPU device's ``memory_bytes``), or None if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class Backend:
    """One runtime's driver: subclass it, set the class attributes below, implement
    :meth:`probe`, :meth:`compile` and :meth:`load` (and :meth:`version`), and
    register an instance from your plugin's ``register_backends`` hook.

    The core does everything around those three: it resolves targets, plans
    conversions to one of :attr:`formats`, refuses a precision the device does
    not offer (:meth:`precisions_for`) and options the backend does not declare
    (:attr:`options`) before ``compile`` runs, caches, and wraps the
    :class:`~hal.plugin.Runner` that ``compile``/``load`` return in
    :class:`hal.Executable`. Methods under "helpers" are for implementations to
    call; they need no overriding. docs/writing-a-backend.md walks through a
    complete plugin."""

    #: unique short name; the first part of every device target ("name:id").
    name: str = ""
    #: one line for ``hal backends``
    description: str = ""
    #: model formats accepted, most preferred first (see ``hal.formats``).
    formats: tuple[str, ...] = ()
    #: precisions the backend can honour on some device: what ``hal backends`` lists.
    #: Each device says what *it* offers in ``Device.precisions``, which is what the
    #: core and conformance go by (:meth:`precisions_for`); keep this the union of those.
    precisions: tuple[str, ...] = ()
    #: bare target names this backend answers besides its own name
    #: (e.g. "cpu", "cuda", "movidius"); devices list them in ``Device.aliases``.
    aliases: tuple[str, ...] = ()
    #: Python modules the runtime needs (checked without importing them) ...
    requires: tuple[str, ...] = ()
    #: ... and what installs them: ``install`` is a pip requirement of the plugin's
    #: own (``"hal-npu-plugin[runtime]"``); ``extra`` names one of hal's own extras
    #: (built-in backends). With neither, the hint names the modules' PyPI names.
    install: str | None = None
    extra: str | None = None
    #: the ``options={...}`` keys this backend understands: an :class:`~hal.plugin.Option`
    #: each (what it does, its type, range or choices), or a plain help string, which
    #: admits JSON scalars only. The core refuses any other key or value before
    #: ``compile`` runs and before ``load`` sees an artifact's recorded options, the
    #: same way for every backend: a typo never passes silently, and a value read
    #: from a file reaches the runtime only if the declaration admits it.
    options: dict[str, str | Option] = {}
    #: a model whose batch dimension is dynamic (an ExportedProgram with a batch ``Dim``,
    #: an ONNX model with a symbolic batch) compiles to an executable that takes any
    #: batch size. The conformance suite checks the claim with dynamic-batch cells.
    dynamic_batch: bool = False
    #: every other dimension the model leaves free (a sequence ``Dim``, an ONNX symbolic
    #: length or image size) stays free too. A backend without it fixes them from the
    #: example input, and the core's note on such an executable names the backends that
    #: keep them free. The contract tests hold the built-in backends to what they declare.
    dynamic_dims: bool = False

    def keeps_free(self, dim: int) -> bool:
        """Whether a dimension the model leaves free stays free here (0: the batch)."""
        return self.dynamic_dims or (dim == 0 and self.dynamic_batch)

    def missing_runtime(self) -> str | None:
        """Why the runtime cannot be used, or ``None`` when it can."""
        absent = missing(self.requires)
        if absent:
            return f"{', '.join(absent)} not installed ({install_hint(absent, self.extra, self.install)})"
        return None

    def version(self) -> str:
        """The runtime's version (part of every cache key)."""
        return "unknown"

    def probe(self) -> list[Device]:
        """Every device this backend knows of, available or not, with reasons.

        An available device lists in ``Device.precisions`` exactly what it offers.
        An unavailable one (``available=False`` and a ``reason``) lists what it
        would offer when the backend can tell without it (a CUDA GPU's, the Edge
        TPU's int8), else ``()``; it is shown by ``hal devices`` and never compiled
        for: the core refuses the target and conformance marks its cells
        not-available without asking :meth:`precisions_for`."""
        raise NotImplementedError

    def formats_for(self, device: Device, precision: str) -> tuple[str, ...]:
        """Formats accepted for this device and precision (default: all of
        :attr:`formats`); the planner converts the model to one of them."""
        return self.formats

    def precisions_for(self, device: Device) -> tuple[str, ...]:
        """The precisions ``device`` offers; the core refuses any other before
        ``compile`` and ``load`` run, and conformance attempts only these.
        Default: ``device.precisions``, always, so what ``hal devices`` shows is
        what runs; ``()`` offers none (the class attribute :attr:`precisions` is
        never a fallback: a device that cannot tell must not claim the backend's
        every precision). Override it only to compute the answer per device."""
        return tuple(device.precisions)

    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        """Build a :class:`~hal.plugin.Runner` for ``device`` from ``model``
        (already in one of :meth:`formats_for`) at ``options.precision`` (one of
        :meth:`precisions_for`; ``options.backend_options`` already passed
        :attr:`options`). Raise ``UnsupportedError`` for what the device cannot
        do, ``CompileError`` when the toolchain fails; never return another
        precision than the one asked for."""
        raise NotImplementedError

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        """Restore a :class:`~hal.plugin.Runner` from the files its
        ``write_artifact`` wrote into the folder ``artifact``. ``info`` comes from
        the artifact's ``hal.json``, already type-checked, with
        ``info.backend_options`` checked against :attr:`options`; every other file
        is untrusted (raise ``ArtifactError`` for one that is not what ``info``
        says)."""
        raise NotImplementedError

    # helpers for implementations -------------------------------------------------
    def executable_info(self, device: Device, precision: str, inputs: list[TensorSpec],
                        outputs: list[TensorSpec], **fields) -> ExecutableInfo:
        """The :class:`ExecutableInfo` of a new executable on ``device``: this
        backend's name and runtime version and the device's target and kind are
        filled in here, so no backend can get them wrong; ``fields`` are the rest
        (``conversion_path``, ``backend_options``, ``notes``, ``extra``)."""
        return ExecutableInfo(self.name, self.version(), device.target, device.kind, precision,
                              list(inputs), list(outputs), **fields)

    def require_runtime(self) -> None:
        """Raise ``DeviceUnavailableError`` naming what to install when
        :meth:`missing_runtime` says the runtime cannot be used; call it first in
        ``compile`` and ``load``."""
        why = self.missing_runtime()
        if why:
            raise DeviceUnavailableError(f"the {self.name} backend cannot run: {why}",
                                         install_hint(missing(self.requires), self.extra, self.install))

    def check_options(self, options: dict) -> None:
        """Refuse keys this backend does not declare in :attr:`options`, and
        values their declaration does not admit (one UsageError). The core calls
        it before ``compile`` (the caller's options) and before ``load`` (an
        artifact's recorded options, where the UsageError becomes one
        ArtifactError); call it yourself only for options read from elsewhere."""
        check_declared(self.name, self.options, options)

    def refuse_precision(self, precision: str, device: Device, why: str = "") -> UnsupportedError:
        """The ``UnsupportedError`` to raise (not raised here) when ``device``
        cannot run ``precision``: it names the precisions the device does offer;
        ``why`` says what stands in the way (``raise backend.refuse_precision(...)``)."""
        ok = ", ".join(self.precisions_for(device)) or "none"
        return UnsupportedError(
            f"{device.target} cannot run precision {precision}" + (f": {why}" if why else ""),
            f"use one of: {ok}, or another target",
        )

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"
