"""Which ops of an Edge TPU executable run on the Edge TPU and which on the host CPU.

* On hardware: the graph LiteRT runs with the libedgetpu delegate, the
  ``edgetpu_compiler`` output. Its ``edgetpu-custom-op`` nodes run on the Edge TPU,
  every other node is a LiteRT CPU kernel; the ops inside a custom op are read from
  the compiler's own mapping report (its log, kept with the artifact).
* ``edgetpu:emulated`` with ``edgetpu_compiler`` installed: the same record (the
  compiler's output and report), of the device that is absent.
* ``edgetpu:emulated`` without the compiler (this machine): the mapping the compiler
  would make, by the rules Coral documents for it (supported-op list, 8-bit tensors,
  static shapes, at most three dimensions above 1, and one partition: everything after
  the first op that does not map stays on the CPU), applied op by op to the very int8
  TFLite the emulator runs (:func:`hal_backends.edgetpu.graph.mapping_report`).

A model with float input/output (TFLiteConverter's default around a full-int8 graph)
starts with a QUANTIZE and ends with a DEQUANTIZE that edgetpu_compiler leaves on the
CPU while it maps the rest: each is listed on the CPU with ``io_conversion`` set
(:func:`hal_backends.edgetpu.graph.edge_conversions`), which the core does not refuse.

Every placement but the hardware one is marked ``emulated``. The hardware and
compiler paths are untested here (no Edge TPU, no edgetpu_compiler).
"""

from __future__ import annotations

from hal.plugin import OpPlacement, Placement

from . import compiler, graph

TPU, CPU = "EdgeTPU", "CPU"

RULES = ("Coral's documented Edge TPU compiler rules (supported-op list, 8-bit tensors, static "
         "shapes, at most 3 dimensions above 1, one partition: every op after the first "
         "unmapped one stays on the CPU; the QUANTIZE/DEQUANTIZE of float model I/O at the "
         "graph's edges stay on the CPU without cutting it)")


def _names(g: graph.Graph) -> list[str]:
    """A name per op: its first output tensor's (TFLite ops have none of their own),
    made unique with the op's index where two ops share one."""
    raw = []
    for op in g.ops:
        t = next((g.tensors[i].name for i in op.outputs if 0 <= i < len(g.tensors)), "")
        raw.append(t or f"op {op.index}")
    seen: dict[str, int] = {}
    for n in raw:
        seen[n] = seen.get(n, 0) + 1
    return [n if seen[n] == 1 else f"{n} [{op.index}]" for n, op in zip(raw, g.ops)]


def predicted(int8: bytes) -> Placement:
    """The mapping edgetpu_compiler would make of ``int8``, by its documented rules."""
    g = graph.read_graph(int8)
    report = graph.mapping_report(g)
    names = _names(g)
    ops = [OpPlacement(names[o.index], o.op, TPU if o.where == "edgetpu" else CPU,
                       o.where == "edgetpu", io_conversion=o.io_conversion) for o in report.ops]
    notes = [f"what edgetpu_compiler would map ({report.summary()}); it was not run here "
             "(not on PATH), so this is its documented rules applied to the int8 TFLite"]
    cpu = report.cpu_ops()
    if cpu:
        first = cpu[0]
        notes.append(f"first op left on the CPU: {names[first.index]} ({first.op}): "
                     + "; ".join(first.reasons))
    notes.extend(report.notes)
    return Placement(ops, f"{RULES}, applied to the int8 TFLite the emulator runs",
                     emulated=True, notes=notes)


def compiled(data: bytes, log: str | None, *, emulated: bool,
             delegate_nodes: list[str] | None = None) -> Placement:
    """The compiled model's own split: each ``edgetpu-custom-op`` on the Edge TPU (the
    ops inside it from the compiler's report, when its log was kept), every other node
    on the CPU. Untested here: no edgetpu_compiler and no Edge TPU on this machine."""
    g = graph.read_graph(data)
    names = _names(g)
    report = compiler.parse_log(log) if log else None
    mapped = [r for r in (report.operators if report else []) if r["where"] == "edgetpu"]
    customs = [op for op in g.ops if op.name == graph.EDGETPU_CUSTOM_OP]
    edges = graph.edge_conversions(g)  # the model's float I/O conversions: not fallback
    ops: list[OpPlacement] = []
    notes: list[str] = []
    for op, name in zip(g.ops, names):
        if op.name != graph.EDGETPU_CUSTOM_OP:
            ops.append(OpPlacement(name, op.name, CPU, False, io_conversion=op.index in edges))
        elif len(customs) == 1 and mapped:  # the report's table counts what went inside
            for r in mapped:
                ops.extend(OpPlacement(f"{name}/{r['op']}:{k}", r["op"], TPU, True)
                           for k in range(int(r["count"])))
        else:
            ops.append(OpPlacement(name, op.name, TPU, True))
    if report is not None:
        notes.append(f"edgetpu_compiler {report.version or '(version unknown)'}: "
                     f"{report.ops_on_edgetpu} op(s) on the Edge TPU, {report.ops_on_cpu} on the CPU")
        if len(customs) > 1 and mapped:
            notes.append(f"{len(customs)} Edge TPU segments: each is listed as one "
                         f"{graph.EDGETPU_CUSTOM_OP} (the report counts their ops together)")
    else:
        notes.append(f"no edgetpu_compiler log kept: each {graph.EDGETPU_CUSTOM_OP} is listed "
                     "as one op")
    if delegate_nodes:
        notes.append("LiteRT delegate kernel node(s): " + ", ".join(delegate_nodes[:8]))
    if g.subgraphs > 1:
        notes.append(f"{g.subgraphs - 1} extra subgraph(s) (control flow) run on the CPU")
    where = ("the graph LiteRT runs with the libedgetpu delegate (edgetpu_compiler's output: "
             f"{graph.EDGETPU_CUSTOM_OP} nodes on the Edge TPU, the other nodes LiteRT CPU kernels)"
             if not emulated else
             f"edgetpu_compiler's output ({graph.EDGETPU_CUSTOM_OP} nodes on the Edge TPU, the "
             "other nodes on the CPU) for the absent device")
    return Placement(ops, where + ("; the ops inside from edgetpu_compiler's mapping report"
                                   if report is not None and mapped else ""),
                     emulated=emulated, notes=notes)


def placement(runner) -> Placement | None:
    files, hardware = runner.files, runner.device.kind == "hardware"
    if hardware and files.compiled is not None:
        # nodes past the model's own are the ones the delegates added (untested: no Edge TPU)
        n = len(graph.read_graph(files.compiled).ops)
        try:
            extra = [d["op_name"] for d in runner._it._get_ops_details()[n:]]
        except Exception:  # noqa: BLE001 - a LiteRT without the private accessor
            extra = []
        return compiled(files.compiled, files.compiler_log, emulated=False, delegate_nodes=extra)
    if files.compiled is not None:
        return compiled(files.compiled, files.compiler_log, emulated=True)
    if files.int8 is not None:
        return predicted(files.int8)
    return None
