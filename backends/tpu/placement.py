"""Where each op of a TPU executable runs, read from the XLA program TensorFlow builds.

Each batch bucket is one ``tf.function(jit_compile=True)``: one XLA computation, all
of it compiled for the device (a TensorFlow op XLA cannot compile fails the compile,
never falls back). Its HLO (``experimental_get_compiler_ir(stage="hlo")``, the same
text the artifact keeps as ``b<n>.hlo.txt``) is read instruction by instruction, from
the entry computation through the computations it calls (``call``, ``while``,
``conditional``); a reducer (``to_apply`` of a reduce) is part of its op. Ops inside
the computation run on the device; transfers to or from the host (``infeed``,
``outfeed``, ``send``/``recv`` with ``is_host_transfer``, the path of TensorFlow's
outside compilation), host callbacks and custom calls marked for the host run on the
host. Parameters, constants and tuples are data, not ops.

On ``tpu:xla-cpu`` the device is XLA:CPU standing in for the TPU (``emulated``). The
host-op path is written from XLA's HLO syntax; no model here has host ops (the
backend's StableHLO guard refuses custom calls), so it is untested with real ones.
"""

from __future__ import annotations

import re

from hal.plugin import OpPlacement, Placement

#: data, structure and ordering tokens, not ops
_DATA = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "after-all"})
#: transfers between the device and its host
_TRANSFERS = frozenset({"infeed", "outfeed"})
_HOST_XFER = frozenset({"send", "recv", "send-done", "recv-done"})
#: custom-call targets that run on the host (Python/FFI host callbacks) or move buffers to it
_HOST_TARGETS = frozenset({
    "xla_python_cpu_callback", "xla_python_gpu_callback", "xla_ffi_python_cpu_callback",
    "xla_ffi_python_gpu_callback", "xla_ffi_partitioned_python_cpu_callback",
    "MoveToHost", "HostCompute", "annotate_host_compute"})

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_REFS = re.compile(r"\b(to_apply|calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


def _opcode(rhs: str) -> tuple[str, str]:
    """``(opcode, the rest)`` of an instruction's right-hand side ``shape opcode(...)``."""
    s = rhs.lstrip()
    if s.startswith("("):  # a tuple shape: skip to its closing parenthesis
        depth = 0
        for i, c in enumerate(s):
            depth += (c == "(") - (c == ")")
            if depth == 0:
                s = s[i + 1:]
                break
    else:
        s = s.split(None, 1)[1] if " " in s else ""
    m = re.match(r"\s*([a-z][\w\-]*)\(", s)
    return (m.group(1), s[m.end():]) if m else ("", s)


def parse(hlo: str) -> tuple[str | None, dict[str, list[tuple[str, str, str]]]]:
    """The entry computation's name and every computation's instructions
    ``(name, opcode, attributes)``, from HLO text."""
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        h = _HEADER.match(line)
        if h:
            current = h.group(2)
            comps[current] = []
            if h.group(1):
                entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            op, rest = _opcode(m.group(2))
            if op:
                comps[current].append((m.group(1), op, rest))
    return entry, comps


def host_op(opcode: str, attrs: str) -> bool:
    if opcode in _TRANSFERS:
        return True
    if opcode in _HOST_XFER:
        return "is_host_transfer=true" in attrs
    if opcode == "custom-call":
        m = _TARGET.search(attrs)
        return (m is not None and m.group(1) in _HOST_TARGETS) or '_xla_compute_type="host"' in attrs
    return False


def hlo_ops(hlo: str) -> list[tuple[str, str, bool]]:
    """``(instruction, op, on the host)`` for every op the program runs, in order."""
    entry, comps = parse(hlo)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    out: list[tuple[str, str, bool]] = []

    def walk(name: str, stack: tuple[str, ...]) -> None:
        if name in stack or name not in comps:
            return
        for inst, opcode, attrs in comps[name]:
            if opcode in _DATA:
                continue
            refs = dict((k, v) for k, v in _REFS.findall(attrs))
            if opcode == "call":  # inlined: its instructions are the ops
                walk(refs.get("to_apply", ""), stack + (name,))
                continue
            label = opcode
            if opcode == "custom-call":
                t = _TARGET.search(attrs)
                label = f"custom-call {t.group(1)}" if t else opcode
            out.append((inst, label, host_op(opcode, attrs)))
            if opcode == "while":
                walk(refs.get("condition", ""), stack + (name,))
                walk(refs.get("body", ""), stack + (name,))
            elif opcode == "conditional":
                branches = _BRANCHES.search(attrs)
                names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches
                         else [refs.get("true_computation", ""), refs.get("false_computation", "")])
                for b in names:
                    walk(b, stack + (name,))

    walk(entry, ())
    return out


def placement(runner) -> Placement:
    device = runner.device
    emulated = device.kind == "emulated"
    unit = "XLA:CPU" if emulated else f"TPU:{device.id}"
    sizes = list(runner.buckets.sizes)
    ops: list[OpPlacement] = []
    for n in sizes:
        prefix = f"b{n}/" if len(sizes) > 1 else ""
        for inst, op, host in hlo_ops(runner.program.ir(n, "hlo")):
            ops.append(OpPlacement(prefix + inst, op, "host" if host else unit, not host))
    notes = []
    if len(sizes) > 1:
        notes.append(f"one XLA program per batch bucket {sizes}: each op is named b<bucket>/<instruction>")
    if emulated:
        notes.append("tpu:xla-cpu: XLA:CPU runs the program the TPU would run")
    return Placement(ops, "the XLA program's HLO (tf.function(jit_compile=True)."
                          "experimental_get_compiler_ir(stage='hlo')), instruction by instruction "
                          "through called computations", emulated=emulated, notes=notes)
