"""The Coral Edge TPU backend: full-int8 TFLite, ``edgetpu_compiler``, libedgetpu.

Devices are the Edge TPUs libedgetpu can see (hardware) and ``edgetpu:emulated``,
the same int8 TFLite on the LiteRT CPU interpreter. A bare ``edgetpu`` target
never means the emulator (the core refuses that); it must be named.
"""

from __future__ import annotations

import os
from hal.plugin import Backend, CompileOptions, ExecutableInfo, Model, installed_version, Runner
from pathlib import Path

from hal import ArtifactError, CompileError, Device, ModelFormatError, UnsupportedError

from . import compiler, devices
from .executable import OPTIONS

PRECISIONS = ("int8",)
#: Coral's datasheet figure: 4 TOPS at 2 W.
POWER_W = 2.0


class EdgeTpuBackend(Backend):
    name = "edgetpu"
    description = ("Google Coral Edge TPU: full-int8 TFLite compiled by edgetpu_compiler, run by "
                   "LiteRT with the libedgetpu delegate; emulated on the LiteRT CPU interpreter")
    formats = ("tflite", "torch.nn", "torch.export", "keras", "savedmodel")
    precisions = PRECISIONS
    aliases = ("coral",)
    requires = ("ai_edge_litert",)
    extra = "edgetpu-runtime"  # loading and running; compiling adds hal-accel[edgetpu]
    options = OPTIONS

    def version(self) -> str:
        """Everything that shapes an artifact (libedgetpu only runs it: not here)."""
        parts = [f"ai-edge-litert {installed_version('ai-edge-litert')}"]
        for label, dists in (("litert-torch", ("litert-torch",)),
                             ("tensorflow", ("tensorflow", "tensorflow-cpu"))):
            v = installed_version(*dists)
            if v:
                parts.append(f"{label} {v}")
        parts.append(f"edgetpu_compiler {compiler.version() or 'absent'}")
        return "; ".join(parts)

    def refuse_precision(self, precision: str, device: Device, why: str = "") -> UnsupportedError:
        return UnsupportedError(
            f"{device.target} cannot run precision {precision}: the Edge TPU runs only fully "
            "int8-quantized TFLite models",
            "use precision='int8' with calibration=[...] (representative inputs)")

    # --- devices ---------------------------------------------------------------------
    def probe(self) -> list[Device]:
        missing = self.missing_runtime()
        found = devices.discover()
        common = dict(precisions=PRECISIONS, aliases=("coral",), rank=50, power_w=POWER_W)
        props = {"runtime_version": found.runtime_version, "discovered_by": found.method,
                 "library": devices.library(), "edgetpu_compiler": compiler.path()}
        out = []
        for f in found.found:
            label = "USB Accelerator" if f.kind == "usb" else "M.2/PCIe module"
            name = f"Coral Edge TPU {label}" + (f" ({f.path})" if f.path else "")
            out.append(Device(self.name, f.id, name,
                              available=missing is None, reason=missing or "",
                              properties={**props, "path": f.path}, **common))
        if not found.found:
            for kind, label in (("usb", "USB Accelerator"), ("pci", "M.2/PCIe module")):
                why = found.why_not.get(kind) or found.why_not.get("*", "not found")
                if "*" in found.why_not and kind in found.why_not:
                    why = f"{found.why_not['*']}; {why}"
                out.append(Device(self.name, f"{kind}:0", f"Coral Edge TPU {label}", available=False,
                                  reason=why, properties=props, **common))
        out.append(Device(
            self.name, "emulated", "Edge TPU emulation: the int8 TFLite on the LiteRT CPU interpreter",
            kind="emulated", available=missing is None, reason=missing or "", precisions=PRECISIONS,
            rank=0, properties={"threads": os.cpu_count(), "edgetpu_compiler": compiler.path()}))
        return out

    # --- compile / load --------------------------------------------------------------
    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        from . import graph, pipeline
        from .executable import Artifacts, EdgeTpuExecutable, EdgeTpuOptions

        self.require_runtime()
        opts = EdgeTpuOptions.parse(options.backend_options)
        alias = []
        if opts.allow_float_ops and not options.allow_host_ops:  # the old backend-specific switch
            options.allow_host_ops = True  # the core's placement gate reads it after compile
            alias.append("options={'allow_float_ops': True} is deprecated: pass "
                         "hal.compile(..., allow_host_ops=True) (CLI --allow-host-ops)")
        # edgetpu.json records the permission too, so load checks the artifact as compile did
        opts.allow_float_ops = options.allow_host_ops
        if opts.raw_io is None:
            # the model's own dtypes (docs/architecture.md, the I/O contract): a given TFLite
            # takes and returns its own I/O (int8, or float with its own QUANTIZE/DEQUANTIZE);
            # a model hal quantizes takes float32, as it did, and hal quantizes around the call
            opts.raw_io = model.format == "tflite"
        conv = pipeline.to_int8(model, options)
        graph.check_model(conv.tflite, ModelFormatError if model.format == "tflite" else CompileError,
                        "the given TFLite model" if model.format == "tflite" else
                        "the converted TFLite model")
        g = graph.read_graph(conv.tflite)
        notes = alias + list(conv.notes)
        files = Artifacts(conv.tflite, None)
        if g.edgetpu_ops:
            self._check_precompiled(g, device)
            files = Artifacts(None, conv.tflite)
        report = graph.mapping_report(g)
        if report.float_tensors and not options.allow_host_ops:
            what = "given TFLite" if model.format == "tflite" else "quantized model"
            cpu = sorted({o.op for o in report.cpu_ops() if any("float" in r for r in o.reasons)})
            raise UnsupportedError(
                f"the Edge TPU runs only full-int8 models; the {what} has "
                f"{len(report.float_tensors)} float tensor(s) ({', '.join(report.float_tensors[:4])}"
                f"{', ...' if len(report.float_tensors) > 4 else ''}) in op(s) {', '.join(cpu)}",
                "quantize it fully (TFLiteConverter with TFLITE_BUILTINS_INT8 and int8 "
                "inference_input/output_type, or pass the source model to hal.compile), or pass "
                "allow_host_ops=True (CLI --allow-host-ops) to run those ops in float on the host CPU")
        if report.float_tensors:
            notes.append(f"not fully int8 (allow_host_ops): {len(report.cpu_ops())} op(s) would run "
                         "on the host CPU in float")
        creport = None
        if files.compiled is None:
            if compiler.path():
                compiled, creport = compiler.compile_model(conv.tflite, opts.min_runtime_version)
                files = Artifacts(conv.tflite, compiled, creport.log)
                notes.append(f"edgetpu_compiler {creport.version}: {creport.ops_on_edgetpu} op(s) on "
                             f"the Edge TPU, {creport.ops_on_cpu} on the CPU")
            elif device.kind == "hardware":
                raise CompileError(
                    "edgetpu_compiler is not on PATH: without it nothing would run on the Edge TPU",
                    "install edgetpu-compiler (Coral's apt repository), or compile elsewhere and "
                    "pass the *_edgetpu.tflite")
            else:
                notes.append("the Edge TPU compile step was not done (edgetpu_compiler is not on "
                             "PATH): the artifact is the int8 TFLite that edgetpu_compiler takes")
        notes.append(f"mapping (predicted): {report.summary()}")
        info = self.executable_info(device, "int8", [], [],
            conversion_path=conv.path + (["edgetpu_compiler"] if creport else []),
            backend_options=dict(options.backend_options), notes=notes,
            extra={"edgetpu_mapping": report.to_dict(),
                   "edgetpu_compiler": creport.to_dict() if creport else None,
                   "int8_tflite_bytes": len(files.int8) if files.int8 else None,
                   "compiled_tflite_bytes": len(files.compiled) if files.compiled else None,
                   "model_size_bytes": len(files.compiled or files.int8 or b"")})
        exe = EdgeTpuExecutable(info, device, files, opts)
        if model.format == "tflite" and options.calibration:  # the given model is already int8
            for n, sample in enumerate(options.calibration):
                pipeline.check_dtypes(n, sample, [s.dtype for s in exe.info.inputs])
            exe.info.notes.append("calibration data not used: the given TFLite is already int8 "
                                  "(hal does not quantize it again)")
        return exe

    def _check_precompiled(self, g, device: Device) -> None:
        """A model edgetpu_compiler already compiled: only the Edge TPU runtime runs
        its custom op, and only if the runtime is at least the version it needs."""
        from . import graph

        pkgs = graph.compiled_packages(g)
        need = max((p.min_runtime_version or 0 for p in pkgs), default=0)
        comp = next((p.compiler_version for p in pkgs if p.compiler_version), None)
        if device.kind == "emulated":
            raise UnsupportedError(
                f"the model is already compiled for the Edge TPU ({graph.EDGETPU_CUSTOM_OP}, "
                f"runtime ≥ {need or '?'}); only the Edge TPU runtime can execute that op",
                "emulate the int8 TFLite from before edgetpu_compiler, or target a real Edge TPU")
        check_runtime(need, comp, devices.runtime_number(device.properties.get("runtime_version")))

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        from .executable import EdgeTpuExecutable, read_artifacts

        self.require_runtime()
        try:
            files, opts = read_artifacts(artifact)
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactError(f"the edgetpu artifact is incomplete ({devices.short(e)})",
                                "recompile the model") from None
        if opts.allow_float_ops:  # an artifact compiled with the old switch keeps its permission
            info.allow_host_ops = True
        self._check_artifact(files, opts, info)
        if device.kind == "hardware" and files.compiled is not None:
            from . import graph

            self._check_precompiled(graph.read_graph(files.compiled), device)
        info.target, info.device_kind = device.target, device.kind
        return EdgeTpuExecutable(info, device, files, opts)

    @staticmethod
    def _check_artifact(files, opts, info: ExecutableInfo) -> None:
        """Before any interpreter sees them: only builtin and Edge TPU ops, and
        int8 as hal.json claims (float tensors only where allow_host_ops said so,
        exactly as compile decides)."""
        from . import graph

        fix = "recompile the model (the artifact was damaged or not written by hal)"
        if info.precision != "int8":
            raise ArtifactError(f"the edgetpu artifact claims precision {info.precision}; the Edge "
                                "TPU runs only int8", fix)
        if files.int8 is None and files.compiled is None:
            raise ArtifactError("the edgetpu artifact holds no TFLite model", fix)
        for label, data in (("int8 TFLite", files.int8), ("compiled TFLite", files.compiled)):
            if data is None:
                continue
            what = f"the edgetpu artifact's {label}"
            graph.check_model(data, ArtifactError, what)
            try:
                report = graph.mapping_report(data)
            except ModelFormatError as e:
                raise ArtifactError(f"{what}: {e.what}", fix) from None
            if report.float_tensors and not info.allow_host_ops:
                raise ArtifactError(f"{what} has float tensors ({report.float_tensors[0]}, ...) but "
                                    "is stored as a full-int8 model (no allow_host_ops)", fix)


def check_runtime(need: int, compiler_version: str | None, runtime: int | None) -> None:
    """Refuse a model whose Edge TPU package needs a newer runtime than libedgetpu's."""
    if need and runtime is not None and need > runtime:
        raise UnsupportedError(
            f"the model was compiled for Edge TPU runtime {need}"
            + (f" (edgetpu_compiler {compiler_version})" if compiler_version else "")
            + f", but this libedgetpu is runtime {runtime}",
            f"recompile with `edgetpu_compiler -m {runtime}` (hal: options={{'min_runtime_version': "
            f"{runtime}}}), or upgrade libedgetpu")
