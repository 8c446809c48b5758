"""Placement: which unit runs each op of an executable, read from the runtime's own record.

Every multi-accelerator runtime can run part of a model on the host while the
rest runs on the device (ONNX Runtime's per-node execution providers, LiteRT's
partially delegated graphs, the Edge TPU compiler's unmapped ops, OpenVINO's
HETERO). A backend's :meth:`~hal.plugin.Runner.placement` reports it; the core
refuses host fallback on a device that is not the host unless the caller allows
it (``hal.compile(..., allow_host_ops=True)``), and then says how much fell back.
An op that only converts the model's own float input or output at the graph's edge
(:attr:`OpPlacement.io_conversion`) runs on the host too, but is no fallback: it is the
conversion hal itself makes around an int8-I/O model, and the gate does not refuse it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: at most this many host ops are named in an error or a note
NAMED = 8
#: an op's name in an error or a note is cut to about this many characters; the record
#: (``exe.placement``) and its summary keep it whole
NAME_CHARS = 40
#: where a runtime's op name may be cut: between path components (``a/b``, ``torch.nn``,
#: ``aten::conv``, TFLite's ``x;y`` of fused tensors)
_SEPARATORS = "/.:;"


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    """``name`` whole when it fits in ``limit`` characters, else its last path
    components that fit, led by ``…`` (cut at a separator, so no component is cut in
    half unless the last one alone is too long; then its end). Runtime op names are
    often a module path hundreds of characters long
    (``pkg.wrapper.<locals>.Logits/transformers.models.resnet...ResNetConvLayer...;1``);
    the end is the part that tells one op from its neighbours."""
    if len(name) <= limit:
        return name
    tail = name[len(name) - limit + 1:]
    cut = next((i for i, ch in enumerate(tail[:-1]) if ch in _SEPARATORS), None)
    return "…" + (tail[cut + 1:] if cut is not None else tail)


@dataclass(frozen=True)
class OpPlacement:
    """One op (or fused layer) of the graph that runs, as the runtime names it."""

    name: str
    #: the op type (``Convolution``, ``CONV_2D``, ``aten.conv2d``)
    op: str
    #: the unit that executes it, in the runtime's words (``CPU``, ``EdgeTPU``, ``cuda:0``)
    unit: str
    #: True when ``unit`` is the executable's device; False when the host runs it instead
    on_device: bool
    #: the op only converts a model input or output between the caller's dtype and the
    #: device's, at the graph's edge (a QUANTIZE of a float graph input, a DEQUANTIZE to a
    #: float graph output). It runs on the host (``on_device`` False), as hal's own
    #: quantization around an int8-I/O model does, so it is not host fallback: the gate
    #: does not refuse it. A conversion inside the graph is an ordinary op.
    io_conversion: bool = False


@dataclass
class Placement:
    """Where every op runs. ``source`` says which runtime record it was read from
    (never a guess); ``emulated`` marks a mapping computed by the documented rules
    of a device that is absent (what *would* run on it)."""

    ops: list[OpPlacement]
    source: str
    emulated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def host_ops(self) -> list[OpPlacement]:
        """The ops the host runs instead of the device: what the core refuses unless
        ``allow_host_ops``. Not the edge conversions of the model's I/O (:attr:`io_ops`)."""
        return [o for o in self.ops if not o.on_device and not o.io_conversion]

    @property
    def io_ops(self) -> list[OpPlacement]:
        """The ops that only convert the model's inputs and outputs at the graph's edges,
        on the host (:attr:`OpPlacement.io_conversion`)."""
        return [o for o in self.ops if o.io_conversion]

    def summary(self) -> dict[str, Any]:
        """Counts for ``ExecutableInfo.placement``, reports and conformance cells:
        ``device_ops + host_ops + io_ops`` is every op."""
        host, io = self.host_ops, self.io_ops
        return {"device_ops": len(self.ops) - len(host) - len(io), "host_ops": len(host),
                "io_ops": len(io), "units": dict(Counter(o.unit for o in self.ops)),
                "host": [f"{o.name} ({o.op})" for o in host[:NAMED]],
                "source": self.source, "emulated": self.emulated}

    def describe_host(self) -> str:
        """'3 of 40 ops (a (Op), b (Op), ...)' for errors and notes, each op by its type and
        its name cut short (:func:`short_name`)."""
        host = self.host_ops
        named = ", ".join(f"{short_name(o.name)} ({o.op})" for o in host[:NAMED])
        more = f", and {len(host) - NAMED} more" if len(host) > NAMED else ""
        return f"{len(host)} of {len(self.ops)} ops ({named}{more})"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "emulated": self.emulated, "notes": list(self.notes),
                "ops": [o.__dict__ for o in self.ops]}


#: how the core's note on host ops the caller allowed begins; conformance reads it to tell
#: host ops the core stated from host ops it never saw (a runner that bypassed the gate)
ALLOWED = "allow_host_ops: "


def allowed_note(p: Placement, target: str) -> str:
    """The core's note on an executable whose host ops the caller allowed."""
    return (f"{ALLOWED}{p.describe_host()} run on the host, not on {target} "
            f"(placement read from {p.source}{'; emulated' if p.emulated else ''})")


def stated(summary: dict[str, Any] | None, notes: list[str]) -> bool:
    """Whether ``notes`` state every host op that ``summary`` (a :meth:`Placement.summary`)
    counts: none to state, or the core's note naming that many."""
    host = int((summary or {}).get("host_ops") or 0)
    total = host + sum(int((summary or {}).get(k) or 0) for k in ("device_ops", "io_ops"))
    return host == 0 or any(n.startswith(f"{ALLOWED}{host} of {total} ops") for n in notes)
