"""Where each layer of an OpenVINO executable runs, read from the compiled model's
runtime graph (``CompiledModel.get_runtime_model()``).

The runtime graph is the one the plugin executes, after its own fusions and the
layout conversions (``Reorder``) it inserted: per layer its ``layerType``, the
kernel (``primitiveType``), the ``runtimePrecision`` and the ``originalLayersNames``
of the model's ops fused into it. It names no device per layer, because one plugin
runs the whole graph: the device is the compiled model's ``EXECUTION_DEVICES``
(``CPU``, ``GPU.0``, ``NPU``, or the one AUTO picked). Only HETERO splits a model
over several devices; its runtime graph is its parts' graphs merged, still with no
device per layer, so each layer's device is read from the split HETERO itself makes,
``Core.query_model`` (an ``affinity`` a layer carries in its rt_info wins).

Verified here on ``openvino:CPU`` and ``openvino:AUTO`` (which picks the CPU). The
GPU, NPU and multi-device paths are written from OpenVINO's API and source and are
untested on this machine (no such device).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hal.plugin import OpPlacement, Placement

from .devices import kind_of

#: runtime-graph entries that are not executed layers
_NOT_LAYERS = frozenset({"Input", "Output", "Const", "Parameter", "Result", "Constant"})


def _text(rt: Any, key: str) -> str:
    try:
        return rt[key].astype(str) if key in rt else ""
    except Exception:  # noqa: BLE001 - an rt_info value that is not text
        return ""


def exec_devices(compiled) -> list[str]:
    try:
        return [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
    except Exception:  # noqa: BLE001 - legacy plugins lack the property
        return []


def _targets(device_id: str) -> tuple[str, list[str]]:
    """The target's kind and, for HETERO/MULTI, its listed devices in priority order."""
    if ":" in device_id:
        head, rest = device_id.split(":", 1)
        return head.upper(), [d.strip() for d in rest.split(",") if d.strip()]
    return kind_of(device_id), []


def placement(runner) -> Placement | None:
    compiled, device = runner.compiled, runner.device
    try:
        rt_model = compiled.get_runtime_model()
        layers = list(rt_model.get_ordered_ops())
    except Exception:  # noqa: BLE001 - e.g. MYRIAD (legacy) exposes no runtime graph
        return None
    execs = exec_devices(compiled)
    kind, listed = _targets(device.id)
    rows = []
    for op in layers:
        rt = op.get_rt_info()
        layer = _text(rt, "layerType")
        if not layer:  # not an executed-graph node (a plugin that keeps no record)
            continue
        if layer in _NOT_LAYERS:
            continue
        names = [n for n in _text(rt, "originalLayersNames").split(",") if n]
        rows.append((op, layer, names, _text(rt, "runtimePrecision"), _text(rt, "primitiveType"),
                     _text(rt, "affinity")))
    if not rows:
        # NPU plugins and others may return a graph of its inputs and outputs only
        return None

    notes: list[str] = []
    per_layer: dict[str, str] = {}  # layer name → device (HETERO only)
    if len(execs) > 1 and kind == "HETERO":
        # untested here: HETERO needs two devices. Its merged runtime graph has no
        # device per layer; the split is Core.query_model's, as HETERO computes it.
        by_op = _query(runner, device.id)
        for op, _, names, _, _, affinity in rows:
            found = affinity or next((by_op[n] for n in names if n in by_op), "")
            if not found:  # a layer the plugin inserted (Reorder, Convert): its input's device
                found = per_layer.get(_producer(op), "")
            per_layer[op.get_friendly_name()] = found or "unknown"
        notes.append("HETERO: each layer's device is Core.query_model's split (the one HETERO "
                     "compiles), matched by the original op names the layer fuses")
    unit_all = execs[0] if len(execs) == 1 else (",".join(execs) if execs else kind)
    if len(execs) > 1 and kind != "HETERO":
        # AUTO with CUMULATIVE_THROUGHPUT, MULTI: each device runs whole requests
        notes.append(f"{device.id} runs whole requests on each of {', '.join(execs)}")

    def on_device(unit: str) -> bool:
        if kind in ("AUTO", "MULTI"):
            return True  # the device is whichever one AUTO picked
        if kind == "HETERO":  # the first listed device is the one asked for; the rest fall back
            return bool(listed) and kind_of(unit) == kind_of(listed[0])
        return kind_of(unit) == kind  # CPU on openvino:CPU: the host CPU is the device

    ops = []
    for op, layer, names, prec, prim, affinity in rows:
        unit = per_layer.get(op.get_friendly_name()) or affinity or unit_all
        ops.append(OpPlacement(op.get_friendly_name(), layer, unit, on_device(unit)))
    precs = Counter(p for *_, p, _, _ in rows if p)
    if precs:
        notes.append("runtime precision per layer: " + ", ".join(
            f"{p} ×{n}" for p, n in precs.most_common()))
    kernels = Counter(prim for *_, prim, _ in rows if prim)
    if kernels:
        notes.append("kernels: " + ", ".join(f"{k} ×{n}" for k, n in kernels.most_common(8))
                     + (", ..." if len(kernels) > 8 else ""))
    if kind == "CPU":
        notes.append("the CPU plugin runs on the host: the host CPU is the device")
    return Placement(ops, f"OpenVINO runtime model (CompiledModel.get_runtime_model(): layerType, "
                          f"primitiveType, runtimePrecision per executed layer; EXECUTION_DEVICES "
                          f"{execs or 'unreported'})", notes=notes)


def _producer(op) -> str:
    """The friendly name of the layer feeding ``op``'s first input ('' if none)."""
    try:
        return op.input(0).get_source_output().get_node().get_friendly_name() \
            if op.get_input_size() else ""
    except Exception:  # noqa: BLE001
        return ""


def _query(runner, device_id: str) -> dict[str, str]:
    """HETERO's own split of the model: original op name → device."""
    try:
        return {str(k): str(v) for k, v in runner.core.query_model(runner.ov_model, device_id).items()}
    except Exception:  # noqa: BLE001 - then every layer is 'unknown', never guessed
        return {}
