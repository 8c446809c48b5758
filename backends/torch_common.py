"""PyTorch helpers shared by the torch-based backends (reference CPU, CUDA).

Imported only from inside a backend's ``compile``/``load``, never at plugin
registration, so listing plugins does not import torch.
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hal import CompileError, InvalidInputError, ModelFormatError, UsageError
from hal.plugin import (Model, TensorSpec, brief, example_leaves, export_free_batch, export_static,
                        positional, program_dim, program_module, read_pt2)

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def example_tensors(model: Model, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    ex = model.example_input
    if not ex and model.format == "torch.export":
        return tuple(a.to(device) for a in example_leaves(model.value))
    if not ex:
        raise UsageError("compiling a torch model needs example inputs",
                         "pass example_input=(x,) to hal.compile / --input to the CLI")
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in ex)


def eval_copy(model: Model) -> torch.nn.Module:
    """A private eval-mode module: the caller's object is never mutated. A
    static ``torch.export`` program given example inputs of another batch size
    is re-batched when that is provably safe (see :func:`rebatched`)."""
    if model.format == "torch.export":
        return rebatched_for(model) or program_module(model.value)
    m = copy.deepcopy(model.value)
    return m.eval()


def cast_graph(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` for a float16/bfloat16 run, including what ``.to`` leaves in a
    graph from torch.export: float32 baked into its nodes (``aten.zeros(..., dtype=float32)``,
    an LSTM's initial state; explicit ``.float()`` casts) and its lifted constants. Left,
    they meet the cast weights at run time ("Input and hidden tensors are not the same
    dtype", "expected scalar type Float but found Half"); rewritten, the whole graph runs at
    the precision its label says, as the eager module cast with ``.to`` does. A graph is
    cast on a copy: ``.to`` casts parameters in place, and a program's module shares them
    with the caller's program (and the module it was exported from); any other module is
    cast in place, as ``.to`` does (``eval_copy``'s is already private)."""
    if not isinstance(module, torch.fx.GraphModule):
        return module.to(dtype)
    module = copy.deepcopy(module).to(dtype)
    top = torch.finfo(dtype).max

    def cast(v):  # float32 → dtype; a finite scalar past dtype's range (a mask's
        # finfo(float32).min) → dtype's own extreme, which CUDA refuses to overflow into
        if v is torch.float32:
            return dtype
        if isinstance(v, float) and math.isfinite(v) and abs(v) > top:
            return math.copysign(top, v)
        return v

    for n in module.graph.nodes:
        if n.op == "call_function":
            n.args = tuple(cast(a) for a in n.args)
            kwargs = {k: cast(v) for k, v in n.kwargs.items()}
            val = n.meta.get("val")
            schema = getattr(n.target, "_schema", None)
            if (kwargs.get("dtype") is None and isinstance(val, torch.Tensor)
                    and val.dtype is torch.float32 and schema is not None
                    and any(a.name == "dtype" and a.kwarg_only for a in schema.arguments)):
                kwargs["dtype"] = dtype  # torch.zeros(n): the default dtype, float32
            n.kwargs = kwargs
        elif n.op == "get_attr":
            owner, _, name = n.target.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            value = getattr(holder, name, None)
            if isinstance(value, torch.Tensor) and value.dtype is torch.float32:
                setattr(holder, name, value.to(dtype))
    module.recompile()
    return module


def rebatched_for(model: Model) -> torch.nn.Module | None:
    """For a static ``torch.export`` program given example inputs of another batch
    size only, the program re-batched (see :func:`rebatched`); else None."""
    ep = model.value
    if model.format == "torch.export" and model.example_input \
            and _batch_only_differs(ep, model.example_input):
        return rebatched(ep, example_tensors(model))
    return None


def _batch_only_differs(ep, arrays) -> bool:
    """A static program (its batch is no Dim) whose example batch is not the caller's."""
    args = example_leaves(ep)
    return (len(args) == len(arrays) and all(isinstance(a, torch.Tensor) for a in args)
            and all(sh and sh[0] is not None for sh, _ in program_shapes(ep)[0])
            and any(a.shape[0] != x.shape[0] for a, x in zip(args, arrays))
            and all(a.ndim == x.ndim and tuple(a.shape[1:]) == tuple(x.shape[1:])
                    for a, x in zip(args, arrays)))


def rebatched(ep, args: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """The program without its shape guards, for a static export asked to run
    another batch size. Dropping guards is only sound if nothing in the graph
    baked the batch in, so it is checked: the batch of ``args`` must give, row
    for row, what the guarded program gives one row at a time (bitwise up to
    float rounding). Else the caller learns in one line how to re-export."""
    free = ep.module(check_guards=False)
    for k, hook in list(free._forward_pre_hooks.items()):  # the input-shape check stays on guarded
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del free._forward_pre_hooks[k]
    free, guarded = positional(ep, free), program_module(ep)
    fix = ("re-export it with dynamic_shapes (e.g. {0: torch.export.Dim('batch')}) to take other "
           "batch sizes, or pass inputs of the exported batch size")
    batch0 = example_leaves(ep)[0].shape[0]
    try:
        with torch.inference_mode():
            whole = flatten(free(*args))
            rows = min(args[0].shape[0], 4) // batch0 * batch0
            for i in range(0, rows, batch0):
                part = flatten(guarded(*[a[i:i + batch0] for a in args]))
                if len(part) != len(whole) or not all(
                        w.shape[0] == args[0].shape[0] and
                        torch.allclose(w[i:i + batch0], p, rtol=1e-5, atol=1e-6)
                        for w, p in zip(whole, part)):
                    raise ValueError("rows differ")
    except Exception as e:  # noqa: BLE001 - the batch is baked into the graph somewhere
        raise InvalidInputError(
            f"this exported program was exported for batch {batch0} and does not run batch "
            f"{args[0].shape[0]} correctly without re-export ({brief(e, 120)})", fix) from None
    return free


def run_example(module: torch.nn.Module, args) -> list[torch.Tensor]:
    """One forward pass on the example inputs; a failure is the caller's input."""
    try:
        with torch.inference_mode():
            return flatten(module(*args))
    except CompileError:  # an output hal cannot pass back: flatten says which and what to do
        raise
    except Exception as e:  # noqa: BLE001
        shapes = [tuple(a.shape) for a in args]
        if "Guard failed" in str(e):  # a torch.export program specialised to other shapes
            raise InvalidInputError(
                f"this exported program only takes the input shapes it was exported with, not "
                f"{shapes} ({brief(e)})",
                "re-export it with dynamic_shapes (e.g. {0: torch.export.Dim('batch')}) to take "
                "other batch sizes, or pass inputs of the exported shape") from None
        raise InvalidInputError(
            f"the model fails on example inputs of shape {shapes}{_binding(module, len(args))}: "
            f"{brief(e)}",
            "pass example inputs of the shape and dtype the model takes, or by name "
            "(example_input={'input_ids': ..., 'attention_mask': ...})") from None


def _binding(module, n: int) -> str:
    """Which of forward's parameters positional example inputs landed on: a mask passed
    second reaches GPT-2's ``past_key_values``, and the error alone does not say so."""
    try:
        names = list(inspect.signature(module.forward).parameters)[:n]
    except (TypeError, ValueError):
        return ""
    return f" (bound by position to {', '.join(names)})" if n > 1 and len(names) == n else ""


def flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten(o)]
    raise CompileError(*not_tensor(out))


def not_tensor(out: Any) -> tuple[str, str]:
    """(what, fix) for an output that is not a tensor or a container of them. A
    transformers cache (DynamicCache: past key/values) comes back when the config
    has ``use_cache=True``, the default of causal LMs."""
    t = type(out)
    if t.__module__.startswith("transformers") and "Cache" in t.__name__:
        return (f"the model returns a transformers {t.__name__} (its past key/values) among its "
                "outputs, which is not a tensor",
                "build it with use_cache=False (e.g. GPT2Config(..., use_cache=False), or "
                "model.config.use_cache = False) so that it returns tensors only")
    return (f"the model returns a {t.__module__}.{t.__name__} among its outputs, which is not a tensor",
            "return tensors, or tuples, lists or dicts of tensors")


def non_tensor_output(module: torch.nn.Module, args) -> tuple[str, str] | None:
    """(what, fix) when ``module(*args)`` returns something hal cannot pass back, else None."""
    try:
        run_example(module, args)
    except CompileError as e:
        return e.what, e.fix or ""
    except Exception:  # noqa: BLE001 - another failure: the caller's own error says it
        return None
    return None


def export(module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
    """``torch.export`` with a dynamic batch dimension where the model allows
    it, else with static shapes. Returns (program, dynamic_batch)."""
    ep = export_free_batch(module, args)
    return (ep, True) if ep is not None else (export_static(module, args), False)


def specs(args: tuple[torch.Tensor, ...], outs: list[torch.Tensor], dynamic: bool,
          names: list[str] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def np_dtype(t: torch.Tensor) -> str:
        return str(t.dtype).removeprefix("torch.")

    ins = [TensorSpec((names or [])[i] if names and i < len(names) else f"input_{i}",
                      ((None,) + tuple(a.shape[1:])) if dynamic else tuple(a.shape), np_dtype(a))
           for i, a in enumerate(args)]
    outs_ = [TensorSpec(f"output_{i}", ((None,) + tuple(o.shape[1:])) if dynamic else tuple(o.shape),
                        np_dtype(o)) for i, o in enumerate(outs)]
    return ins, outs_


def program_shapes(ep) -> tuple[list[tuple], list[tuple]]:
    """The (shape, dtype) of each user input and output of an exported program,
    read from the graph: a symbolic dimension (a batch or sequence ``Dim``) is
    ``None``, whatever size the example that traced it had."""
    def of(v) -> tuple:
        return (tuple(program_dim(d) for d in v.shape),
                str(v.dtype).removeprefix("torch."))

    user = set(ep.graph_signature.user_inputs)
    ins = [of(n.meta["val"]) for n in ep.graph.nodes
           if n.op == "placeholder" and n.name in user and isinstance(n.meta.get("val"), torch.Tensor)]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = [of(a.meta["val"]) for a in torch.utils._pytree.tree_leaves(out_node.args[0])
            if hasattr(a, "meta") and isinstance(a.meta.get("val"), torch.Tensor)]
    return ins, outs


def fast_module(program, module: torch.fx.GraphModule | None = None) -> torch.nn.Module:
    """``program.module()`` (or ``module``, a transform of it with the same inputs) for an
    executable that calls it many times. ``program.module()`` re-flattens inputs and outputs
    with pytree, runs two forward hooks and re-checks every input guard on each call: 25-30%
    of a sub-millisecond CNN's time here. This runs the same graph and weights (shared, not
    copied) with one tensor per user input in the program's order and returns the flat
    outputs; the program's own guards (a batch Dim's range, two inputs' sequence lengths
    being equal) still run, once per set of input shapes and dtypes. A program without a
    guard function, or one whose inputs are not all tensors, gets the ordinary module."""
    gm = program.module() if module is None else module
    guards = getattr(gm, "_guards_fn", None)
    spec = getattr(program.call_spec, "in_spec", None)
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if guards is None or spec is None or spec.num_leaves != len(holders) or any(
            not isinstance(a, torch.Tensor) for a in example_leaves(program)):
        return positional(program, gm)
    graph = copy.deepcopy(gm.graph)
    graph.set_codegen(torch.fx.graph.CodeGen())  # flat in, flat out: no pytree per call
    for n in list(graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            graph.erase_node(n)
    return _Checked(torch.fx.GraphModule(gm, graph), guards)


def compile_graph(module: torch.nn.Module, compile_fn) -> torch.nn.Module:
    """``compile_fn`` (e.g. ``torch.compile``) applied to what :func:`fast_module` gave:
    to its bare graph, its guard check kept outside (Python, once per set of shapes)."""
    if isinstance(module, _Checked):
        return _Checked(compile_fn(module.bare), module.guards, module.checked)
    return compile_fn(module)


class _Checked(torch.nn.Module):
    """A bare graph whose inputs' shapes were checked by the program's guards: once per
    set of shapes and dtypes (kept up to 1024; a model called with ever-new shapes
    re-checks, it does not grow). Thread safe: a race only checks a shape twice."""

    MAX_SHAPES = 1024

    def __init__(self, bare: torch.nn.Module, guards: torch.nn.Module, checked: set | None = None):
        super().__init__()
        self.bare = bare
        self.guards = guards
        self.checked: set = set() if checked is None else checked

    def forward(self, *flat: torch.Tensor):
        key = tuple((x.shape, x.dtype) for x in flat)
        if key not in self.checked:
            try:
                self.guards(*flat)
            except AssertionError as e:  # "Guard failed: m.size()[1] == a.size()[1]"
                raise InvalidInputError(
                    f"inputs of shapes {[tuple(x.shape) for x in flat]} break the exported "
                    f"program's shape rules ({brief(e, 200)})",
                    "pass inputs whose sizes keep the rules the program was exported with (dims "
                    "that share a Dim must be equal), or re-export it with other dynamic_shapes"
                ) from None
            if len(self.checked) >= self.MAX_SHAPES:
                self.checked.clear()
            self.checked.add(key)
        return self.bare(*flat)


def save_program(ep, directory: Path, name: str = "model.pt2") -> None:
    torch.export.save(ep, str(directory / name))


def load_program(directory: Path, name: str = "model.pt2", error=None):
    """The saved ExportedProgram, read without unpickling; ``error`` (e.g.
    ArtifactError) replaces ModelFormatError for a program inside a ``.hal``."""
    try:
        return read_pt2(directory / name)
    except ModelFormatError as e:
        if error is None:
            raise
        raise error(e.what, e.fix) from None
