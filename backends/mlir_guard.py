"""Parse, check and re-print the StableHLO a torch artifact runs.

The ``.hal`` of a torch model holds each bucket's program as StableHLO text,
which XLA's call-module op compiles; a SavedModel's ``XlaCallModule`` ops hold
theirs as MLIR bytecode (what jax2tf and Keras' JAX export write) or text, and
:mod:`hal_backends.tf_graph_guard` checks them here too. A program is checked as MLIR, never by
pattern: MLIR spells an op many ways (generic form, ``\\XX`` escapes in the
quoted name, aliases), and XLA resolves a ``stablehlo.custom_call`` target by
name, i.e. runs native code. So :func:`check`:

1. refuses text nested deeper than :data:`MAX_DEPTH` before parsing (MLIR's
   parser recurses, and ~10 000 levels overflow the C++ stack: a crash, not
   an error);
2. parses it with MLIR (jaxlib's bindings: builtin, func, stablehlo and chlo
   registered, unregistered dialects refused) and verifies it; bytecode is
   read as XLA's call-module op reads it, as a StableHLO portable artifact
   (VHLO, upgraded to StableHLO) — no nesting bound applies before that;
3. walks every op against an allow-list: the module, functions with bodies,
   calls and returns, and the stablehlo/chlo ops, minus :data:`DENIED` (custom
   calls, host transfers); the same rule applies at compile. A caller may
   name custom-call targets it permits (``custom_calls``; the torch path
   permits none);
4. reads ``@main``'s argument types from the parsed function;
5. re-prints the module: XLA gets that text, never the file's bytes.

Every refusal is one error naming what was wrong. Imports jaxlib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from hal import HalError
from hal.plugin import brief, printable

#: deeper bracket nesting than any program hal writes (a CNN needs ~6), far
#: below what overflows the parser's stack in a 1 MiB thread.
MAX_DEPTH = 64
#: whole ops allowed outside :data:`DIALECTS`. No ``func.call_indirect`` or
#: ``func.constant`` (no function pointers), no nested modules.
OPS = frozenset({"func.func", "func.return", "func.call"})
#: dialects whose ops are pure tensor computation (except :data:`DENIED`).
DIALECTS = ("stablehlo", "chlo")
#: ops that leave the program: custom calls run native code found by name
#: (host callbacks among them, e.g. ``xla_python_cpu_callback``), infeed,
#: outfeed, send and recv move data to and from the host. hal's own lowering
#: never emits them (checked at compile with the same rule), so there is no
#: allow-list of custom-call targets.
DENIED = frozenset({"stablehlo.custom_call", "stablehlo.infeed", "stablehlo.outfeed",
                    "stablehlo.send", "stablehlo.recv"})
#: what MLIR bytecode starts with
BYTECODE_MAGIC = b"ML\xefR"
#: MLIR element types → the dtype names tpu.json and the weights use
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64",
          "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "ui8": "uint8",
          "i1": "bool"}

#: the tokens that matter for nesting, as MLIR's lexer sees them: a string
#: (``\\`` escapes one character, no newline inside), a ``//`` comment, the
#: ``->`` arrow, a bracket.
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|//[^\n]*|->|[()\[\]{}<>]')
_CLOSE = {")": "(", "]": "[", "}": "{", ">": "<"}


@dataclass(frozen=True)
class Checked:
    """A program that passed: the text to hand XLA, and what it declares."""

    #: the parsed module, re-printed
    text: str
    #: (shape, dtype) of each ``@main`` argument; None if one is not a static tensor
    main_args: list[tuple[tuple[int, ...], str]] | None
    #: True when any value in the program is bfloat16
    bf16: bool


class _Refused(Exception):
    pass


def nesting(text: str) -> int:
    """The deepest bracket nesting outside strings and comments (a closing
    bracket of another kind closes nothing, so this never under-counts)."""
    stack: list[str] = []
    deepest = 0
    for m in _TOKEN.finditer(text):
        t = m.group()
        if len(t) != 1:
            continue
        if t in _CLOSE:
            if stack and stack[-1] == _CLOSE[t]:
                stack.pop()
        else:
            stack.append(t)
            deepest = max(deepest, len(stack))
    return deepest


def _context():
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import chlo, stablehlo

    ctx = ir.Context()
    ctx.enable_multithreading(False)
    try:  # func (and other upstream dialects, which the allow-list refuses)
        from jaxlib.mlir._mlir_libs import _jax_mlir_ext

        registry = ir.DialectRegistry()
        _jax_mlir_ext.register_dialects(registry)
        ctx.append_dialect_registry(registry)
    except (ImportError, AttributeError):  # older jaxlib registers them at site init
        pass
    ctx.allow_unregistered_dialects = False
    stablehlo.register_dialect(ctx)
    chlo.register_dialect(ctx)
    return ctx


def _parse(text: str, ctx):
    from jaxlib.mlir import ir

    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("is not UTF-8 text") from None
    try:
        return ir.Module.parse(data, context=ctx)
    except ir.MLIRError as e:
        diags = getattr(e, "error_diagnostics", None) or []
        if diags:
            d = diags[0]
            where = re.sub(r'^loc\("-":(\d+):(\d+)\)$', r"line \1, column \2", str(d.location))
            # MLIR's hint for its command-line tools is no help here
            msg = f"{d.message.split('. If this is intended')[0]} ({where})"
        else:
            msg = brief(e, 160)
        raise _Refused(f"is not valid MLIR: {printable(' '.join(msg.split()), 160)}") from None
    except Exception as e:  # noqa: BLE001 - the binding's own errors (e.g. decoding)
        raise _Refused(f"could not be parsed as MLIR ({brief(e, 120, typed=True)})") from None


def _string(attr) -> str:
    from jaxlib.mlir import ir

    try:
        return ir.StringAttr(attr).value
    except Exception:  # noqa: BLE001 - not a string, or not UTF-8
        return str(attr)


def _as(cls, t):
    """``t`` as MLIR type class ``cls``, or None (casting raises when it is not one)."""
    try:
        return t if isinstance(t, cls) else cls(t)
    except (ValueError, TypeError):
        return None


def _tensor(t) -> tuple[tuple[int, ...], str] | None:
    from jaxlib.mlir import ir

    rt = _as(ir.RankedTensorType, t)
    if rt is None or not rt.has_static_shape:
        return None
    dtype = DTYPES.get(str(rt.element_type))
    return None if dtype is None else (tuple(int(d) for d in rt.shape), dtype)


def _is_bf16(t) -> bool:
    from jaxlib.mlir import ir

    shaped = _as(ir.ShapedType, t)
    return _as(ir.BF16Type, shaped.element_type if shaped is not None else t) is not None


def _refusal(op, custom_calls: frozenset[str] = frozenset()) -> str | None:
    """Why ``op`` may not run, or None."""
    name = op.name
    if name == "stablehlo.custom_call":
        target = (_string(op.attributes["call_target_name"])
                  if "call_target_name" in op.attributes else "?")
        if target in custom_calls and "call_target_name" in op.attributes:
            return None
        return (f"makes XLA custom call {printable(target, 60)!r}, which runs native code outside "
                f"StableHLO")
    if name in DENIED:
        return f"holds op {name}, which moves data to or from the host"
    if name == "func.func" and (not op.regions or not len(op.regions[0].blocks)):
        return f"declares function {_string(op.attributes['sym_name'])[:60]!r} without a body"
    if name in OPS or (name.split(".", 1)[0] in DIALECTS and name not in DENIED):
        return None
    return (f"holds op {printable(name, 60)}, outside what hal lets XLA run (func.func/call/return, "
            f"{'/'.join(DIALECTS)} ops)")


def _walk(module, custom_calls: frozenset[str] = frozenset()) -> bool:
    """Refuse any op outside the allow-list; True if any value is bfloat16."""
    bf16 = False
    stack = []
    for block in module.operation.regions[0].blocks:
        stack.extend(o.operation for o in block.operations)
    while stack:
        op = stack.pop()
        why = _refusal(op, custom_calls)
        if why:
            raise _Refused(why)
        bf16 = bf16 or any(_is_bf16(r.type) for r in op.results)
        for region in op.regions:
            for block in region.blocks:
                bf16 = bf16 or any(_is_bf16(a.type) for a in block.arguments)
                stack.extend(o.operation for o in block.operations)
    return bf16


def _main_args(module) -> list[tuple[tuple[int, ...], str]] | None:
    from jaxlib.mlir import ir

    for op in module.body.operations:
        op = op.operation
        if op.name == "func.func" and _string(op.attributes["sym_name"]) == "main":
            if "sym_visibility" in op.attributes and \
                    _string(op.attributes["sym_visibility"]) != "public":
                raise _Refused("has a private @main")
            ft = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
            args = [_tensor(t) for t in ft.inputs]
            return None if any(a is None for a in args) else args
    raise _Refused("has no function @main")


def _parse_bytecode(data: bytes, ctx):
    """MLIR bytecode as ``XlaCallModule`` reads it: a StableHLO portable
    artifact (VHLO, converted to StableHLO), else plain bytecode of the
    registered dialects; verified either way."""
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import stablehlo

    try:
        module = stablehlo.deserialize_portable_artifact(ctx, data)
    except Exception:  # noqa: BLE001 - not VHLO: the plain parser says why
        module = None
    if module is None:
        try:
            module = ir.Module.parse(data, context=ctx)
        except ir.MLIRError as e:
            diags = getattr(e, "error_diagnostics", None) or []
            msg = diags[0].message.split(". If this is intended")[0] if diags else brief(e, 160)
            raise _Refused(f"is not valid MLIR bytecode: {printable(' '.join(msg.split()), 160)}"
                           ) from None
        except Exception as e:  # noqa: BLE001 - the binding's own errors
            raise _Refused(f"could not be read as MLIR bytecode ({brief(e, 120, typed=True)})"
                           ) from None
    if not module.operation.verify():  # pragma: no cover - verify() raises on failure
        raise _Refused("does not verify as MLIR")
    return module


def check(text: str | bytes, error: Callable[[str], HalError],
          custom_calls: frozenset[str] = frozenset()) -> Checked:
    """Parse and check ``text``; ``error(why)`` builds the one error raised,
    where ``why`` continues a sentence about the program ("is not valid MLIR: …").

    ``text`` may be ``bytes`` (an ``XlaCallModule``'s attribute): MLIR
    bytecode when it starts with :data:`BYTECODE_MAGIC`, else UTF-8 text.
    ``custom_calls`` names the custom-call targets allowed (none by default)."""
    try:
        if isinstance(text, bytes) and text.startswith(BYTECODE_MAGIC):
            ctx = _context()
            module = _parse_bytecode(text, ctx)
        else:
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Refused("is neither MLIR bytecode nor UTF-8 text") from None
            if not isinstance(text, str):
                raise _Refused(f"is a {type(text).__name__}, not text")
            depth = nesting(text)
            if depth > MAX_DEPTH:
                raise _Refused(f"nests brackets {depth} deep (more than {MAX_DEPTH})")
            ctx = _context()
            module = _parse(text, ctx)
        if module.operation.name != "builtin.module":  # pragma: no cover - parse() wraps ops
            raise _Refused(f"is a {module.operation.name}, not a module")
        bf16 = _walk(module, frozenset(custom_calls))
        args = _main_args(module)
        out = module.operation.get_asm(enable_debug_info=False)
        # the re-print is what XLA parses: bound it too (a hex constant of high
        # rank prints as that many nested brackets)
        if nesting(out) > MAX_DEPTH:
            raise _Refused(f"prints with brackets nested more than {MAX_DEPTH} deep")
        return Checked(out, args, bf16)
    except _Refused as r:
        raise error(str(r)) from None
    except HalError:
        raise
    except Exception as e:  # noqa: BLE001 - a binding error while walking: still one error
        raise error(f"could not be checked as MLIR ({brief(e, 120, typed=True)})") from None
