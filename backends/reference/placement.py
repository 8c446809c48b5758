"""Where each op of a reference executable runs: the host CPU, which is this backend's
device, read from the graph each runtime runs.

* torch: every node of the FX graph torch runs (an int8 / int8-dynamic / loaded
  executable runs a GraphModule), or, for a module torch runs eagerly, of its
  ``torch.export`` program (the same ops at the same precision), with each node's
  device from the graph (:mod:`hal_backends.torch_placement`).
* ONNX: every node of the ``onnx.reference`` evaluator (its ``rt_nodes_``), Python and
  numpy kernels (torch for Conv and pooling) in this process, on the host CPU.
"""

from __future__ import annotations

from hal.plugin import OpPlacement, Placement

HOST = "the reference backend runs in this process: the host CPU is its device"


def torch_placement(runner) -> Placement | None:
    import torch

    from .. import torch_placement as tp

    module = getattr(runner.module, "bare", runner.module)  # tc.fast_module's graph
    if isinstance(module, torch.fx.GraphModule):
        graph, owner = module.graph, module
        source = ("the torch.fx graph torch runs (GraphModule.graph): each node's device from "
                  "its meta['val'], else from the tensors it reads")
    elif runner.program is not None:
        graph, owner = runner.program.graph, runner.program.graph_module
        source = ("the torch.export graph of the module torch runs eagerly (ExportedProgram.graph, "
                  "the same ops at the same precision): each node's device from its meta['val']")
    else:
        return None  # no graph: the module could not be exported, and eager mode keeps no record
    found, unknown = tp.ops(graph, owner)
    notes = [HOST]
    if unknown:
        notes.append(f"{unknown} call node(s) with no tensor value or tensor input left out")
    return Placement([OpPlacement(name, op, str(dev), dev.type == "cpu") for name, op, dev in found],
                     source, notes=notes)


def onnx_placement(runner) -> Placement:
    oracle = getattr(runner, "oracle", None)
    session = oracle.session if oracle is not None else runner.session
    ops = []
    for i, node in enumerate(session.rt_nodes_):
        proto = getattr(node, "onnx_node", None)
        name = (proto.name if proto is not None and proto.name else
                f"{node.op_type}_{i}" if proto is None or not proto.output else proto.output[0])
        ops.append(OpPlacement(name, node.op_type, "CPU", True))
    notes = [HOST]
    if oracle is not None:
        notes.append("fp64 oracle: onnxruntime (CPUExecutionProvider) runs the original model "
                     "beside it on every call, as the cross-check")
    return Placement(ops, "the onnx.reference evaluator's node list (ReferenceEvaluator.rt_nodes_), "
                          "run in this process on the host CPU", notes=notes)
