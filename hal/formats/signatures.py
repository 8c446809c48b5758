"""Reading the I/O contract (:class:`hal.signature.Signature`) off the model the user gave.

One function per source format; each imports its framework when called, and
returns ``None`` where the model does not say (the backend's names then stand).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..signature import Signature, leaf_names


def _pytree_to_json(spec: Any) -> Any:
    """torch's pytree spec as hal's JSON tree; ``ValueError`` for a container
    hal cannot rebuild (a custom class: its outputs stay a flat tuple)."""
    if spec.is_leaf():
        return None
    kids = [_pytree_to_json(c) for c in (spec.children() if hasattr(spec, "children")
                                         else spec.children_specs)]
    t, ctx = spec.type, spec.context
    if t is tuple or (isinstance(t, type) and issubclass(t, tuple)):
        if isinstance(ctx, (list, tuple)) and len(ctx) == len(kids) and all(isinstance(k, str) for k in ctx):
            return ["dict", list(ctx), kids]  # a namedtuple: its fields by name
        return ["tuple", kids]
    if t is list:
        return ["list", kids]
    if isinstance(ctx, (list, tuple)) and len(ctx) == len(kids):  # dict, OrderedDict, ModelOutput
        return ["dict", [str(k) for k in ctx], kids]
    raise ValueError(f"output container {getattr(t, '__name__', t)}")


def _outputs(spec: Any, leaves: list | None = None) -> dict[str, Any]:
    """``Signature`` fields for a torch output spec: the tree and the names it gives
    (one tensor alone is ``output_0``), or nothing where hal cannot rebuild it."""
    import torch

    if leaves is not None and (not leaves or not all(isinstance(x, torch.Tensor) for x in leaves)):
        return {}  # None, ints or an unregistered object among the outputs: no tree to keep
    try:
        tree = _pytree_to_json(spec)
    except (ValueError, AttributeError):
        return {}
    return {"tree": tree, "outputs": leaf_names(tree)}


def _forward_names(module: Any, n: int) -> list[str] | None:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    names = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        names.append(p.name)
    return names[:n] if len(names) >= n else None


def torch_module(module: Any, example: tuple | None) -> Signature | None:
    """``forward``'s parameter names, and the structure of one eager call on the
    example (in eval mode, the caller's training flags restored after)."""
    if not example:
        return None
    import torch

    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.inference_mode():
            out = module(*(torch.from_numpy(a.copy()) for a in example))
    except Exception:  # noqa: BLE001 - the backend's own run reports a failing model
        out = None
    finally:
        for m, f in flags:
            m.training = f
    fields = {}
    if out is not None:
        from torch.utils import _pytree as pytree

        leaves, spec = pytree.tree_flatten(out)
        fields = _outputs(spec, leaves)
    return Signature(inputs=_forward_names(module, len(example)), **fields)


def exported(ep: Any, example: tuple | None = None) -> Signature | None:
    """The program's user inputs (tensor placeholders, by the names export gave
    them: ``forward``'s parameters) and its output spec."""
    from torch.export.graph_signature import InputKind, TensorArgument

    names = [s.arg.name for s in ep.graph_signature.input_specs
             if s.kind == InputKind.USER_INPUT and isinstance(s.arg, TensorArgument)]
    return Signature(inputs=names or None, shapes=_program_shapes(ep), **_outputs(ep.call_spec.out_spec))


def _program_shapes(ep: Any) -> list[tuple] | None:
    """Each user input's shape as the program declares it: a symbolic dimension is ``None``."""
    import torch

    from .torchexport import program_dim

    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    if not all(isinstance(v, torch.Tensor) for v in vals):
        return None
    return [tuple(program_dim(d) for d in v.shape) for v in vals]


def onnx_model(proto: Any, example: tuple | None = None) -> Signature:
    """The graph's inputs (less initializers listed as inputs) and outputs, by name."""
    init = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in init]

    def shape(vi) -> tuple | None:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)

    shapes = [shape(i) for i in ins]
    return Signature(inputs=[i.name for i in ins], outputs=[o.name for o in proto.graph.output],
                     shapes=None if None in shapes else shapes)


def keras_model(model: Any, example: tuple | None = None) -> Signature | None:
    """A functional Keras model's input and output tensors' names."""
    try:
        ins = [t.name for t in model.inputs]
        outs = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
    except (AttributeError, TypeError, ValueError):
        return None
    return Signature(inputs=ins or None, outputs=outs or None)
