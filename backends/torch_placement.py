"""The device of every op of a torch FX graph, read from the graph itself (shared by
the reference and CUDA backends' ``placement.py``; imports torch).

torch.export records each node's output as a fake tensor in ``node.meta["val"]``, device
included; ``move_to_device_pass`` rewrites it with the graph. Nodes a later pass inserted
without one (PT2E's quantize/dequantize, a dynamic-int8 linear) take the device of the
tensors they read, as torch's dispatcher does. Nodes whose value is not a tensor (a
``sym_size``, shape arithmetic, an assert) are bookkeeping on the host, not ops on a
device, and are left out; so is ``operator.getitem``, which picks a tuple element.
"""

from __future__ import annotations

import operator
from typing import Any, Iterator

import torch

_CALLS = ("call_function", "call_method", "call_module")


def _tensors(v: Any) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)


def _attr(owner: Any, target: str) -> Any:
    obj = owner
    for part in str(target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_op(target: Any) -> bool:
    """A torch operator (``aten.*``, ``quantized.*``, a higher-order op), not Python code
    such as export's ``_guards_fn`` shape check."""
    return isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)) \
        or type(target).__name__.endswith("OpOverload")


def op_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"module {t}"
    if node.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, torch._ops.HigherOrderOperator):
        return f"higher_order.{t.name()}"
    if _is_op(t):
        return str(t)  # aten.conv2d.default, quantized.linear_dynamic.default
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__qualname__', getattr(t, '__name__', str(t)))}".lstrip(".")


def ops(graph: torch.fx.Graph, owner: Any = None) -> tuple[list[tuple[str, str, torch.device]], int]:
    """``(node name, op, device)`` of every tensor op of ``graph``, in graph order, and
    how many torch ops had no device to read (neither a tensor value nor tensor inputs).
    ``owner`` is the GraphModule whose attributes ``get_attr`` nodes name."""
    device: dict[torch.fx.Node, torch.device | None] = {}
    out: list[tuple[str, str, torch.device]] = []
    unknown = 0
    for node in graph.nodes:
        dev, tensor = None, None
        if "val" in node.meta:
            ts = list(_tensors(node.meta["val"]))
            tensor = bool(ts)
            dev = ts[0].device if ts else None
        elif node.op == "get_attr" and owner is not None:
            obj = _attr(owner, node.target)
            if isinstance(obj, torch.Tensor):
                dev, tensor = obj.device, True
        elif node.op == "call_function" and _is_op(node.target):
            kw = node.kwargs.get("device")
            if isinstance(kw, (str, torch.device)):
                dev = torch.device(kw)
            else:  # the device of the tensors it reads, as the dispatcher picks it
                dev = next((device[a] for a in node.all_input_nodes if device.get(a) is not None),
                           None)
            tensor = dev is not None or None
        device[node] = dev
        if node.op not in _CALLS or node.target is operator.getitem or tensor is False \
                or (tensor is None and not (node.op == "call_function" and _is_op(node.target))):
            continue  # not a tensor op: bookkeeping, a tuple element, Python code
        if dev is None:
            unknown += 1
            continue
        out.append((node.name, op_name(node), dev))
    return out, unknown
