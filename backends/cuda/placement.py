"""Where each op of a CUDA executable runs, read from the graph each GPU runs.

Every replica runs the exported program moved to its GPU (``move_to_device_pass``,
which rewrites each node's recorded value and device arguments): each op's device is
the one its node records (:mod:`hal_backends.torch_placement`). An op on its replica's
GPU is on the device; one on the CPU (a tensor the model pins to the host) is a host op.
A model that could not be exported runs eagerly and keeps no graph: ``None``.

Under ``torch.compile`` dynamo may break the program into several graphs, with Python
running on the host between them (the ops in those stretches still launch on the GPU
in eager mode). How many graphs and breaks it made is read from dynamo's own cache of
the compiled ``forward`` (its transformed bytecode calls one ``__compiled_fn`` per graph
and one ``__resume_at`` function per break) and reported in the notes.

Unverified: no GPU on the machine this was written on. The graph walk and the dynamo
reading are exercised on the CPU (a program moved to the ``meta`` device, a module
compiled with dynamo's ``eager`` backend); the CUDA path itself has not run.
"""

from __future__ import annotations

from typing import Any

from hal.plugin import OpPlacement, Placement


def dynamo_record(module: Any) -> tuple[int, int, int] | None:
    """``(cache entries, graphs, graph breaks)`` dynamo holds for ``module.forward``, or
    None where this torch does not expose its cache (a private API)."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:
        return None
    fwd = type(module).forward
    code, glb = getattr(fwd, "__code__", None), getattr(fwd, "__globals__", {})
    if code is None:
        return None
    entries = graphs = breaks = 0
    seen, todo, top = set(), [code], True
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        try:
            cached = _debug_get_cache_entry_list(c)
        except Exception:  # noqa: BLE001 - the private API changed
            return None
        if top:
            entries, top = len(cached), False
        for e in cached:
            names = e.code.co_names
            graphs += sum(n.startswith("__compiled_fn") for n in names)
            resume = [n for n in names if n.startswith("__resume_at")]
            breaks += len(resume)
            todo.extend(glb[n].__code__ for n in resume if hasattr(glb.get(n), "__code__"))
    return entries, graphs, breaks


def graph_module(module: Any) -> Any:
    """The graph a replica runs: the bare graph inside ``tc.fast_module``'s wrapper."""
    return getattr(module, "bare", module)


def graph_placement(replicas: list[Any]) -> tuple[list[OpPlacement], list[str]] | None:
    """Each replica's ops (``replica.module`` on ``replica.device``), or None when a
    replica runs an eager module (no graph to read)."""
    import torch

    from .. import torch_placement as tp

    ops: list[OpPlacement] = []
    notes: list[str] = []
    multi = len(replicas) > 1
    for r in replicas:
        m = graph_module(r.module)
        if not isinstance(m, torch.fx.GraphModule):
            return None
        found, unknown = tp.ops(m.graph, m)
        ops.extend(OpPlacement(f"{name}@{r.device}" if multi else name, op, str(dev),
                               dev == r.device) for name, op, dev in found)
        if unknown:
            notes.append(f"{r.device}: {unknown} torch op(s) with no device recorded left out")
    if multi:
        notes.append(f"one replica per GPU ({', '.join(str(r.device) for r in replicas)}): "
                     "each op is named <node>@<gpu>")
    return ops, notes


def placement(runner) -> Placement | None:
    got = graph_placement(runner.replicas)
    if got is None:
        return None
    ops, notes = got
    recipe = runner.recipe
    if recipe.torch_compile:
        for r in runner.replicas:
            rec = dynamo_record(graph_module(r.module))  # what torch.compile compiled
            if rec is None:
                notes.append(f"torch.compile({recipe.torch_compile!r}): dynamo's graph record "
                             "is not readable in this torch")
                break
            entries, graphs, breaks = rec
            notes.append(f"torch.compile({recipe.torch_compile!r}) on {r.device}: dynamo made "
                         f"{graphs} graph(s) in {entries} cache entr{'y' if entries == 1 else 'ies'}"
                         f", {breaks} graph break(s)"
                         + (" (Python runs on the host between the graphs; their ops still run "
                            "on the GPU)" if breaks else ""))
    if recipe.cuda_graphs:
        notes.append("CUDA graphs: the launches of each input shape are captured once and replayed")
    return Placement(ops, "the torch.fx graph each GPU runs (the exported program after "
                          "move_to_device_pass): each node's device from its meta['val']; "
                          "torch.compile graph breaks from dynamo's cache", notes=notes)
